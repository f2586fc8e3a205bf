"""The `agent` node, strategy `function_calling`: the model is offered the node's tools, its
tool calls run through the tool catalog, up to `maximum_iterations` rounds; the last round
offers no tools, so the model answers (as Dify's function-calling strategy does).

`agent_parameters` as Dify exports them, each `{type, value}`: `model` (a model selector:
provider, model, completion_params), `tools` (a list of `{provider_name, tool_name, type,
enabled, parameters: {name: {auto, value}}, settings: {name: {value: {type, value}}}}`;
`auto: 1` parameters are the model's to fill, the others and the settings are fixed),
`instruction` (the system prompt), `query` (the user message), `maximum_iterations`.

Outputs: `text` (the final answer), `files` (`[]`), `json` (one log entry per round and per
tool call: fanflow's own shape, not Dify's plugin log), `usage`. Other strategies (ReAct)
are refused. Each model call goes through `fanflow.llm` (breaker, limits, retries), each
tool call through `fanflow.tools` as in a tool node.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fanflow.context import ExecutionContext, ExecutionOutcome, node_label
from fanflow.errors import NodeError
from fanflow.executors.outbound import context_pool, tool_http
from fanflow.executors.tool import catalog_of, find_tool
from fanflow.llm.invoke import invoke
from fanflow.messages import NodeTask
from fanflow.tools.base import Tool, ToolCall, ToolError, coerce_parameters
from fanflow.tools.catalog import Provider, ToolNotFound, active_catalog
from fanflow.variables import render, resolve_or_none

__all__ = ["check_agent", "run_agent_node"]

DEFAULT_MAX_ITERATIONS = 3
STRATEGIES = frozenset({"function_calling"})


def _parameter(data: Mapping[str, Any], name: str) -> Any:
    entry = (data.get("agent_parameters") or {}).get(name)
    return entry.get("value") if isinstance(entry, Mapping) else entry


def _tools_of(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    tools = _parameter(data, "tools")
    return [t for t in tools or [] if isinstance(t, Mapping) and t.get("enabled", True)]


def check_agent(data: Mapping[str, Any], problems: list[str]) -> None:
    strategy = data.get("agent_strategy_name")
    if strategy not in STRATEGIES:
        problems.append(
            f"agent_strategy_name {strategy!r} is not supported: fanflow runs function_calling"
        )
        return
    model = _parameter(data, "model")
    if not isinstance(model, Mapping) or not model.get("model"):
        problems.append("agent_parameters.model must be a model selector {provider, model}")
    for tool in _tools_of(data):
        try:
            active_catalog().find(
                str(tool.get("type") or "builtin"),
                str(tool.get("provider_name") or ""),
                str(tool.get("provider_name") or ""),
                str(tool.get("tool_name") or ""),
            )
        except ToolNotFound as exc:
            problems.append(f"agent tool: {exc}")


def _fixed(entry: Any, task: NodeTask) -> Any:
    value = entry.get("value") if isinstance(entry, Mapping) else entry
    if isinstance(value, Mapping) and value.get("type") in ("mixed", "variable", "constant"):
        if value["type"] == "variable":
            return resolve_or_none(task.lookup, value.get("value") or [])
        if value["type"] == "mixed":
            return render(str(value.get("value") or ""), task.lookup)
        return value.get("value")
    return value


class _Offered:
    def __init__(self, spec: Mapping[str, Any], provider: Provider, tool: Tool, task: NodeTask):
        self.provider, self.tool = provider, tool
        self.name = str(spec.get("tool_name"))
        parameters = spec.get("parameters") or {}
        self.auto = {
            str(k)
            for k, v in parameters.items()
            if not isinstance(v, Mapping) or v.get("auto", 1) in (1, True, "1")
        }
        self.fixed = {
            str(k): _fixed(v, task)
            for k, v in {**parameters, **(spec.get("settings") or {})}.items()
            if str(k) not in self.auto
        }
        self.description = str(spec.get("tool_description") or tool.description)

    def function(self) -> dict[str, Any]:
        schema = self.tool.input_schema()
        schema["properties"] = {k: v for k, v in schema["properties"].items() if k in self.auto}
        schema["required"] = [k for k in schema["required"] if k in self.auto]
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": schema},
        }


async def run_agent_node(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
    label = node_label(task)
    data = task.data
    if data.get("agent_strategy_name") not in STRATEGIES:
        raise NodeError(
            f"{label}: agent strategy {data.get('agent_strategy_name')!r} is not supported",
            error_type="NotSupportedError",
        )
    model = _parameter(data, "model") or {}
    model_task = task.model_copy(
        update={
            "data": {
                **data,
                "model": {
                    "provider": model.get("provider"),
                    "name": model.get("model"),
                    "mode": model.get("mode") or "chat",
                    "completion_params": model.get("completion_params") or {},
                },
            }
        }
    )
    offered = _offer(task, context, label)
    messages: list[dict[str, Any]] = []
    instruction = render(str(_parameter(data, "instruction") or ""), task.lookup)
    if instruction:
        messages.append({"role": "system", "content": instruction})
    messages.append(
        {"role": "user", "content": render(str(_parameter(data, "query") or ""), task.lookup)}
    )
    rounds = _max_iterations(data)
    logs: list[dict[str, Any]] = []
    tokens = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    text = ""
    async with context_pool(context) as pool:
        for round_number in range(1, rounds + 1):
            last = round_number == rounds or not offered
            extra = {} if last else {"tools": [o.function() for o in offered.values()]}
            completion, _ = await invoke(model_task, context, messages, extra=extra)
            for key, value in completion.usage.as_output().items():
                if key in tokens and isinstance(value, int):
                    tokens[key] += value
            calls = [] if last else list(completion.tool_calls)
            logs.append(
                {
                    "label": f"ROUND {round_number}",
                    "status": "success",
                    "data": {
                        "output": completion.text,
                        "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in calls],
                    },
                }
            )
            if not calls:
                text = completion.text
                break
            messages.append(
                {
                    "role": "assistant",
                    "content": completion.text or None,
                    "tool_calls": [
                        {
                            "id": f"call_{round_number}_{i}",
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        }
                        for i, c in enumerate(calls)
                    ],
                }
            )
            for i, call in enumerate(calls):
                answer = await _call_tool(offered, call.name, call.arguments, pool, context, label)
                logs.append(
                    {
                        "label": f"CALL {call.name}",
                        "status": "success",
                        "data": {"tool_input": call.arguments, "tool_response": answer},
                    }
                )
                messages.append(
                    {"role": "tool", "tool_call_id": f"call_{round_number}_{i}", "content": answer}
                )
    return ExecutionOutcome(
        outputs={"text": text, "files": [], "json": logs, "usage": tokens},
        total_tokens=tokens["total_tokens"],
    )


def _max_iterations(data: Mapping[str, Any]) -> int:
    value = _parameter(data, "maximum_iterations")
    try:
        return max(1, int(value)) if value not in (None, "") else DEFAULT_MAX_ITERATIONS
    except (TypeError, ValueError):
        return DEFAULT_MAX_ITERATIONS


def _offer(task: NodeTask, context: ExecutionContext, label: str) -> dict[str, _Offered]:
    catalog = catalog_of(context)
    offered: dict[str, _Offered] = {}
    for spec in _tools_of(task.data):
        provider, tool = find_tool(
            catalog,
            label,
            kind=spec.get("type"),
            provider_id=spec.get("provider_name"),
            provider_name=spec.get("provider_name"),
            tool_name=spec.get("tool_name"),
        )
        offered[str(spec.get("tool_name"))] = _Offered(spec, provider, tool, task)
    return offered


async def _call_tool(
    offered: Mapping[str, _Offered],
    name: str,
    arguments: str,
    pool: Any,
    context: ExecutionContext,
    label: str,
) -> str:
    """The tool's answer as the model reads it; a bad call is the answer, not a failure."""
    chosen = offered.get(name)
    if chosen is None:
        return f"there is no tool named {name}"
    try:
        given = json.loads(arguments or "{}")
    except ValueError:
        return f"tool arguments must be a JSON object, got {arguments[:100]!r}"
    if not isinstance(given, dict):
        return "tool arguments must be a JSON object"
    params = {k: v for k, v in given.items() if k in chosen.auto}
    params.update(chosen.fixed)
    try:
        values = coerce_parameters(chosen.tool, params, label)
    except ToolError as exc:
        return str(exc)
    http = tool_http(
        context,
        pool,
        provider=chosen.provider.name,
        label=label,
        trusted_hosts=chosen.provider.config.trusted_hosts(),
    )
    call = ToolCall(
        label=label, provider=chosen.provider.name, config=chosen.provider.config, http=http
    )
    result = await chosen.tool.invoke(values, call)
    if result.text:
        return result.text
    return json.dumps(result.json, ensure_ascii=False) if result.json else ""
