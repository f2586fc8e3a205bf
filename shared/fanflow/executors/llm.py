"""The `llm` node: render its prompt, make one chat completion, report text and usage.

Outputs as Dify's: `text`, `reasoning_content`, `usage`, `finish_reason`, and with
structured output on (`structured_output_enabled` + `structured_output.schema`) the parsed
object as `structured_output`. Structured output is always asked of the endpoint as
`response_format: json_schema` (Dify falls back to prompt instructions for models without
native support; fanflow cannot know a model's features). A reply that is not a JSON object
following the schema is a retryable `format` failure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fanflow.context import ExecutionContext, ExecutionOutcome, node_label
from fanflow.errors import NodeError
from fanflow.llm.client import Completion, format_failure
from fanflow.llm.invoke import invoke
from fanflow.llm.params import json_schema_format
from fanflow.llm.prompts import llm_messages
from fanflow.llm.structured import parse_object, schema_error
from fanflow.messages import NodeTask

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


async def run_llm_node(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
    label = node_label(task)
    messages = llm_messages(task.data, task.lookup, label=label, history=task.history)
    schema = structured_output_schema(task.data, label=label)
    extra: dict[str, Any] = {}
    check = None
    if schema is not None:
        extra["response_format"] = json_schema_format(schema)

        def check(completion: Completion) -> dict[str, Any]:
            try:
                parsed = parse_object(completion.text)
            except ValueError as exc:
                raise format_failure(f"{label}: structured output: {exc}") from exc
            error = schema_error(parsed, schema)
            if error:
                raise format_failure(
                    f"{label}: structured output does not follow the schema: {error}"
                )
            return parsed

    completion, structured = await invoke(task, context, messages, extra=extra, check=check)
    text, reasoning = _split_reasoning(completion.text, task.data.get("reasoning_format"))
    outputs: dict[str, Any] = {
        "text": text,
        "reasoning_content": reasoning,
        "usage": completion.usage.as_output(),
        "finish_reason": completion.finish_reason,
    }
    if schema is not None:
        outputs["structured_output"] = structured
    if completion.answered_by is not None:  # fanflow.fallback_models: which model answered
        outputs["model"] = completion.answered_by.as_output()
    return ExecutionOutcome(outputs=outputs, total_tokens=completion.usage.total_tokens)


def structured_output_schema(data: Mapping[str, Any], *, label: str) -> dict[str, Any] | None:
    """The schema when structured output is on, else None (Dify's switch, old or new name)."""
    enabled = data.get("structured_output_enabled", data.get("structured_output_switch_on"))
    config = data.get("structured_output")
    if not enabled or not isinstance(config, Mapping):
        return None
    schema = config.get("schema")
    if not isinstance(schema, Mapping):
        raise NodeError(
            f"{label}: structured_output.schema must be a JSON schema object",
            error_type="LLMNodeError",
        )
    return dict(schema)


def _split_reasoning(text: str, reasoning_format: Any) -> tuple[str, str]:
    """`separated`: `<think>` blocks move to `reasoning_content`; `tagged` (Dify's default)
    leaves the text as it is."""
    if reasoning_format != "separated":
        return text, ""
    reasoning = "\n".join(part.strip() for part in _THINK.findall(text))
    return _THINK.sub("", text).strip(), reasoning
