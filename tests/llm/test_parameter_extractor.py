"""The `parameter-extractor` node: function calling and prompt modes, Dify's success rules."""

from __future__ import annotations

from typing import Any

import pytest

from fanflow.errors import NodeError
from fanflow.executors.parameter_extractor import run_parameter_extractor
from fanflow.llm.extraction import check_result, coerce_result, parameters_of
from fanflow.resilience.upstreams import UpstreamFailure
from tests.llm.conftest import MockFactory, make_task

PARAMETERS = [
    {"name": "city", "type": "string", "description": "the city", "required": True},
    {"name": "nights", "type": "number", "description": "nights", "required": False},
    {"name": "breakfast", "type": "bool", "description": "with breakfast", "required": False},
    {"name": "room", "type": "select", "options": ["single", "double"], "description": "room"},
    {"name": "guests", "type": "array[string]", "description": "guest names", "required": False},
]
QUERY = "Book Lisbon for 3 nights, double room, breakfast, for Ana and Rui"


def extractor_task(mode: str = "function_call", **extra: Any) -> Any:
    data = {
        "type": "parameter-extractor",
        "model": {
            "provider": "openai",
            "name": "pe-model",
            "mode": "chat",
            **extra.pop("model", {}),
        },
        "query": ["start", "q"],
        "parameters": extra.pop("parameters", PARAMETERS),
        "instruction": "Dates are in {{#start.region#}} format",
        "reasoning_mode": mode,
        **extra,
    }
    return make_task("parameter-extractor", data, {"start.q": QUERY, "start.region": "EU"})


async def test_function_call_mode_offers_a_tool_and_reads_its_call(mock_llm: MockFactory) -> None:
    mock = mock_llm()  # answers a tool offer with a call built from the tool's schema
    outcome = await run_parameter_extractor(extractor_task(), mock.context())
    body = mock.last_body()
    [tool] = body["tools"]
    assert tool["function"]["name"] == "extract_parameters"
    schema = tool["function"]["parameters"]
    assert schema["required"] == ["city"]
    assert schema["properties"]["room"] == {
        "description": "room",
        "type": "string",
        "enum": ["single", "double"],
    }
    assert schema["properties"]["breakfast"]["type"] == "boolean"
    assert schema["properties"]["guests"] == {
        "description": "guest names",
        "type": "array",
        "items": {"type": "string"},
    }
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "Dates are in EU format" in body["messages"][0]["content"]
    assert QUERY in body["messages"][1]["content"]
    out = outcome.outputs
    assert (out["__is_success"], out["__reason"]) == (1, None)
    assert isinstance(out["city"], str) and isinstance(out["nights"], float)
    assert isinstance(out["breakfast"], bool) and out["room"] in ("single", "double")
    assert len(out["guests"]) == 2
    assert out["__usage"]["total_tokens"] == outcome.total_tokens > 0


async def test_wrong_types_are_reported_not_failed(mock_llm: MockFactory) -> None:
    arguments = {
        "city": "Lisbon",
        "nights": "3",
        "breakfast": 1,
        "room": "double",
        "guests": ["Ana", 2],
    }
    mock = mock_llm(
        replies=[
            {
                "model": "pe-model",
                "tool_call": {"name": "extract_parameters", "arguments": arguments},
            }
        ]
    )
    outcome = await run_parameter_extractor(extractor_task(), mock.context())
    out = outcome.outputs
    assert out["__is_success"] == 0
    assert out["__reason"] == 'Invalid value for parameter nights: expected number, got "3"'
    # coerced all the same, as Dify does
    assert (out["city"], out["nights"], out["breakfast"], out["room"], out["guests"]) == (
        "Lisbon",
        3,
        True,
        "double",
        ["Ana"],
    )


async def test_prompt_mode_reads_json_from_the_text(mock_llm: MockFactory) -> None:
    reply = 'Here you go:\n```json\n{"city": "Lisbon", "nights": 3, "breakfast": true, "room": "double", "guests": ["Ana", "Rui"]}\n```'
    mock = mock_llm(replies=[{"model": "pe-model", "text": reply}])
    outcome = await run_parameter_extractor(extractor_task("prompt"), mock.context())
    body = mock.last_body()
    assert "tools" not in body
    # system, one worked example (user + assistant), then the question
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert QUERY in body["messages"][-1]["content"] and '"room"' in body["messages"][-1]["content"]
    assert outcome.outputs == {
        "__is_success": 1,
        "__reason": None,
        "__usage": outcome.outputs["__usage"],
        "city": "Lisbon",
        "nights": 3,
        "breakfast": True,
        "room": "double",
        "guests": ["Ana", "Rui"],
    }


async def test_no_json_gives_empty_values(mock_llm: MockFactory) -> None:
    mock = mock_llm(replies=[{"model": "pe-model", "text": "I cannot help with that."}])
    parameters = [p for p in PARAMETERS if p["type"] in ("string", "number", "bool")]
    outcome = await run_parameter_extractor(
        extractor_task("prompt", parameters=parameters), mock.context()
    )
    out = outcome.outputs
    assert out["__is_success"] == 0
    assert out["__reason"] == "No JSON object found in the model's reply; using empty values"
    assert (out["city"], out["nights"], out["breakfast"]) == ("", 0, False)


async def test_completion_model_gets_one_prompt(mock_llm: MockFactory) -> None:
    mock = mock_llm(replies=[{"model": "pe-model", "json": {"city": "Porto"}}])
    parameters = PARAMETERS[:1]
    outcome = await run_parameter_extractor(
        extractor_task(model={"mode": "completion"}, parameters=parameters), mock.context()
    )
    body = mock.last_body()
    assert "tools" not in body and len(body["messages"]) == 1
    assert outcome.outputs["city"] == "Porto" and outcome.outputs["__is_success"] == 1


async def test_a_failed_call_fails_the_node(mock_llm: MockFactory) -> None:
    mock = mock_llm("--error-rate", "1")
    with pytest.raises(UpstreamFailure) as caught:
        await run_parameter_extractor(extractor_task(), mock.context())
    assert caught.value.reason == "status_5xx"


def test_bad_declarations_fail() -> None:
    with pytest.raises(NodeError, match=r"parameters\[0\] \(x\): type 'date' is not one of"):
        parameters_of({"parameters": [{"name": "x", "type": "date"}]}, label="n1")
    with pytest.raises(NodeError, match="'__reason' is reserved"):
        parameters_of({"parameters": [{"name": "__reason", "type": "string"}]}, label="n1")


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ({"city": "a", "nights": 1, "breakfast": False, "room": "single", "guests": []}, None),
        ({"city": "a", "nights": True, "breakfast": False, "room": "single", "guests": []}, None),
        ({"city": "a"}, "Invalid number of parameters"),
        (
            {"town": "a", "nights": 1, "breakfast": False, "room": "single", "guests": []},
            "Parameter city is required",
        ),
        (
            {"city": "a", "nights": 1, "breakfast": False, "room": "suite", "guests": []},
            "Invalid `select` value for parameter room",
        ),
        (
            {"city": "a", "nights": 1, "breakfast": "yes", "room": "single", "guests": []},
            'Invalid value for parameter breakfast: expected boolean, got "yes"',
        ),
    ],
)
def test_check_result(result: dict, reason: str | None) -> None:
    assert check_result(parameters_of({"parameters": PARAMETERS}, label="n"), result) == reason


def test_coerce_result() -> None:
    parameters = parameters_of(
        {
            "parameters": [
                *PARAMETERS,
                {"name": "scores", "type": "array[number]", "description": ""},
                {"name": "flags", "type": "array[boolean]", "description": ""},
                {"name": "items", "type": "array[object]", "description": ""},
            ]
        },
        label="n",
    )
    raw = {
        "city": 5,
        "nights": "2.5",
        "breakfast": 0,
        "room": "double",
        "guests": "Ana",
        "scores": [1, "2", "x", True],
        "flags": [True, 1, False],
        "items": [{"a": 1}, "b"],
    }
    assert coerce_result(parameters, raw) == {
        "city": "",
        "nights": 2.5,
        "breakfast": False,
        "room": "double",
        "guests": [],
        "scores": [1, 2, 1],
        "flags": [True, False],
        "items": [{"a": 1}],
    }
