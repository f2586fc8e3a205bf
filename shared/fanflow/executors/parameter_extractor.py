"""The `parameter-extractor` node: ask the model for the declared parameters of a text.

`reasoning_mode: function_call` (the default) offers one tool, `extract_parameters`, whose
JSON schema is the parameters', and reads the first tool call's arguments (or, when the
model answers in text instead, the first JSON object in it); `prompt` asks for a bare JSON
object. Completion-mode models always get the `prompt` way.

As in Dify, a failed model call fails the node, while an unusable answer does not: the
node succeeds with `__is_success: 0`, `__reason` saying what was wrong, and each parameter
at its type's empty value. Outputs: the parameters, `__is_success`, `__reason`, `__usage`.
"""

from __future__ import annotations

from typing import Any

from fanflow.chat.memory import with_history_section
from fanflow.context import ExecutionContext, ExecutionOutcome, node_label
from fanflow.llm.extraction import (
    check_result,
    coerce_result,
    extraction_tool,
    function_call_messages,
    json_prompt_messages,
    parameters_of,
    parameters_schema,
)
from fanflow.llm.invoke import ModelConfig, invoke
from fanflow.llm.structured import find_object
from fanflow.messages import NodeTask
from fanflow.variables import render, resolve_or_none, to_text

_NO_JSON = "No JSON object found in the model's reply; using empty values"


async def run_parameter_extractor(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
    label = node_label(task)
    data = task.data
    parameters = parameters_of(data, label=label)
    schema = parameters_schema(parameters)
    query = _query(task)
    instruction = render(str(data.get("instruction") or ""), task.lookup)
    chat = ModelConfig.of(task).mode != "completion"
    extra: dict[str, Any] = {}
    if chat and (data.get("reasoning_mode") or "function_call") == "function_call":
        messages = function_call_messages(query, instruction, schema)
        extra["tools"] = [extraction_tool(schema)]
    else:
        messages = json_prompt_messages(query, instruction, schema, chat=chat)

    messages = with_history_section(messages, task.history)
    completion, _ = await invoke(task, context, messages, extra=extra)
    reason: str | None = None
    if completion.tool_calls:
        result = find_object(completion.tool_calls[0].arguments) or {}
    else:
        found = find_object(completion.text)
        if found is None:
            # Dify checks a stand-in answer: the empty value of every non-array parameter
            reason = _NO_JSON
            found = {p.name: p.empty() for p in parameters if p.kind != "array"}
        result = found
    # a problem with the answer replaces the "no JSON" one, as in Dify
    reason = check_result(parameters, result) or reason
    outputs = {
        "__is_success": 0 if reason else 1,
        "__reason": reason,
        "__usage": completion.usage.as_output(),
        **coerce_result(parameters, result),
    }
    return ExecutionOutcome(outputs=outputs, total_tokens=completion.usage.total_tokens)


def _query(task: NodeTask) -> str:
    selector = task.data.get("query")
    if not isinstance(selector, list) or len(selector) < 2:
        return ""
    return to_text(resolve_or_none(task.lookup, [str(part) for part in selector]))
