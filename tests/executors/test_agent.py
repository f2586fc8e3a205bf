"""The agent node (function calling) against `fanflow mock-llm`, with the tools of Dify's
agent fixture run through the tool catalog."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from fanflow.dsl.load import load_workflow
from fanflow.errors import WorkflowInvalid
from fanflow.executors import execute_task
from fanflow.messages import NodeTask
from tests.llm.conftest import MockFactory, mock_llm  # noqa: F401  (the fixture)

FIXTURE = (
    Path(__file__).resolve().parents[1]
    / "data/dify/fixtures/graphon_examples/graphon_chatflow_dsl_runner__chatflow_dsl_agent.yml"
)


def agent_data() -> dict[str, Any]:
    nodes = yaml.safe_load(FIXTURE.read_text(encoding="utf-8"))["workflow"]["graph"]["nodes"]
    data: dict[str, Any] = next(n["data"] for n in nodes if n["data"]["type"] == "agent")
    return copy.deepcopy(data)


def agent_task(data: dict[str, Any]) -> NodeTask:
    return NodeTask(
        task_id="r/-/agent/0",
        run_id="r",
        node_id="agent",
        node_type="agent",
        node_title="Agent",
        data=data,
    )


async def test_function_calling_rounds_run_the_tools(mock_llm: MockFactory) -> None:  # noqa: F811
    mock = mock_llm()
    data = agent_data()
    data["agent_parameters"]["query"] = {"type": "constant", "value": 'parse {"a": 1}'}
    data["agent_parameters"]["maximum_iterations"] = {"type": "constant", "value": 2}
    result = await execute_task(agent_task(data), mock.context())
    assert result.status == "succeeded", result.error
    first, second = [request["body"] for request in mock.requests()]
    [offered] = first["tools"]
    assert offered["function"]["name"] == "parse"
    # the `auto` parameters are the model's; the settings (ensure_ascii) are fixed
    assert set(offered["function"]["parameters"]["properties"]) == {"content", "json_filter"}
    assert first["messages"][0] == {"role": "system", "content": "Testing"}
    # the last round offers no tools and carries the tool's answer back
    assert "tools" not in second
    call, answer = second["messages"][-2], second["messages"][-1]
    assert call["tool_calls"][0]["function"]["name"] == "parse"
    assert answer["role"] == "tool" and answer["tool_call_id"] == call["tool_calls"][0]["id"]
    arguments = json.loads(call["tool_calls"][0]["function"]["arguments"])
    assert set(arguments) >= {"content", "json_filter"}
    assert result.outputs["text"].startswith("mock-")
    labels = [entry["label"] for entry in result.outputs["json"]]
    assert labels == ["ROUND 1", "CALL parse", "ROUND 2"]
    assert result.outputs["json"][1]["data"]["tool_response"] == answer["content"]
    assert result.outputs["usage"]["total_tokens"] > 0


async def test_one_iteration_answers_without_tools(mock_llm: MockFactory) -> None:  # noqa: F811
    mock = mock_llm()
    data = agent_data()
    data["agent_parameters"]["maximum_iterations"] = {"type": "constant", "value": 1}
    result = await execute_task(agent_task(data), mock.context())
    assert result.status == "succeeded", result.error
    [request] = mock.requests()
    assert "tools" not in request["body"]


def test_the_fixture_validates_and_other_strategies_are_refused() -> None:
    load_workflow(FIXTURE)
    text = FIXTURE.read_text(encoding="utf-8").replace(
        "agent_strategy_name: function_calling", "agent_strategy_name: ReAct"
    )
    try:
        load_workflow("react", text=text)
    except WorkflowInvalid as exc:
        assert any("'ReAct' is not supported" in str(p) for p in exc.problems)
    else:
        raise AssertionError("a ReAct agent must be refused")
    text = FIXTURE.read_text(encoding="utf-8").replace("tool_name: parse", "tool_name: teleport")
    try:
        load_workflow("teleport", text=text)
    except WorkflowInvalid as exc:
        assert any("has no tool 'teleport'" in str(p) for p in exc.problems)
    else:
        raise AssertionError("an unknown agent tool must be refused")
