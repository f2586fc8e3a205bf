"""The messages an `llm` node sends, assembled as Dify assembles them.

- Chat models: `prompt_template` is a list of `{role, text, edition_type, jinja2_text}`.
  `basic` text has `{{#node.var#}}` rendered and `{{#context#}}` replaced by the context;
  `jinja2` messages render `jinja2_text` with `prompt_config.jinja2_variables` (raw values;
  no `{{#context#}}`). A message that renders empty is left out; all empty is an error.
- Completion models: one `{text}` (or jinja2) sent as a single user message.
- `context` (`enabled`, `variable_selector`): a string as is; an array joined line by line
  (knowledge-retrieval items as their `summary` and `content`).
- Every `{{#...#}}` a prompt names must exist, as in Dify ("Variable ... not found").
- Memory (`fanflow.chat.memory`): a node with `memory` gets the conversation's earlier
  turns (`history`, already cut to its window). Chat models: the turns as user/assistant
  messages after the node's own messages, then its `query_prompt_template` (else
  `sys.query`) as a user message. Completion models: the turns as text with
  `memory.role_prefix` (required, as in Dify) at `#histories#`, else on the lines before
  the prompt. Vision is ignored: files are not sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fanflow.chat.memory import history_messages, history_text
from fanflow.errors import NodeError
from fanflow.nodes.template import render_template
from fanflow.variables import Lookup, iter_references, render, resolve_or_none, selector_key

ROLES = frozenset({"system", "user", "assistant"})
CONTEXT_PLACEHOLDER = "{{#context#}}"


def llm_messages(
    data: Mapping[str, Any],
    lookup: Lookup,
    *,
    label: str,
    history: Sequence[Mapping[str, str]] = (),
) -> list[dict[str, str]]:
    """The chat messages for an `llm` node's `data`; `history`: its window of earlier
    turns (`{query, answer}`, oldest first) when it has memory."""
    template = data.get("prompt_template")
    context = context_text(data.get("context"), lookup, label=label)
    jinja_values = _jinja2_values(data.get("prompt_config"), lookup, label=label)
    messages: list[dict[str, str]] = []
    if isinstance(template, Mapping):  # completion model: one prompt
        text = _render_message(template, lookup, context, jinja_values, label=label)
        # Dify splices the history into completion prompts: at `#histories#`, else before
        # the prompt on a line of its own (an empty line without memory)
        histories = _histories_text(data.get("memory"), history, label=label)
        if "#histories#" in text:
            text = text.replace("#histories#", histories)
        else:
            text = histories + "\n" + text
        messages.append({"role": "user", "content": text})
    elif isinstance(template, list):
        for index, item in enumerate(template):
            if not isinstance(item, Mapping):
                raise NodeError(f"{label}: prompt_template[{index}] must be a mapping")
            role = str(item.get("role") or "user")
            if role not in ROLES:
                raise NodeError(
                    f"{label}: prompt_template[{index}].role {role!r} is not one of "
                    "system, user, assistant",
                    error_type="LLMNodeError",
                )
            text = _render_message(item, lookup, context, jinja_values, label=label)
            if text:
                messages.append({"role": role, "content": text})
        if isinstance(data.get("memory"), Mapping):
            messages.extend(history_messages(history))
        query = _memory_query(data.get("memory"), lookup)
        if query:
            messages.append({"role": "user", "content": render(query, lookup)})
    else:
        raise NodeError(
            f"{label}: prompt_template must be a list of messages or one {{text}}",
            error_type="LLMNodeError",
        )
    if not any(message["content"] for message in messages):
        raise NodeError(
            f"{label}: every prompt message is empty; configure a prompt",
            error_type="NoPromptFoundError",
        )
    return messages


def context_text(config: Any, lookup: Lookup, *, label: str) -> str:
    """What `{{#context#}}` reads as: "" when the context is off or holds no text."""
    if not isinstance(config, Mapping) or not config.get("enabled"):
        return ""
    selector = config.get("variable_selector")
    if not isinstance(selector, list) or len(selector) < 2:
        return ""
    value = resolve_or_none(lookup, [str(part) for part in selector])
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return ""
    parts: list[str] = []
    for item in value:
        if isinstance(item, str):
            parts.append(item + "\n")
        elif isinstance(item, Mapping) and "content" in item:
            if item.get("summary"):
                parts.append(f"{item['summary']}\n")
            parts.append(f"{item['content']}\n")
        else:
            raise NodeError(
                f"{label}: invalid context item {item!r}: expected text or an object "
                "with `content`",
                error_type="InvalidContextStructureError",
            )
    return "".join(parts).strip()


def _render_message(
    item: Mapping[str, Any],
    lookup: Lookup,
    context: str,
    jinja_values: Mapping[str, Any],
    *,
    label: str,
) -> str:
    jinja2 = item.get("edition_type") == "jinja2"
    source = str((item.get("jinja2_text") if jinja2 else item.get("text")) or "")
    require_references(source, lookup, label=label)
    if jinja2:
        if not source:
            return ""
        try:
            return render_template(source, jinja_values)
        except NodeError as exc:
            raise NodeError(f"{label}: jinja2 prompt: {exc}", error_type=exc.error_type) from exc
    return render(source.replace(CONTEXT_PLACEHOLDER, context), lookup)


def require_references(text: str, lookup: Lookup, *, label: str) -> None:
    """Dify fails an LLM node whose prompt names a variable that does not exist."""
    for selector in iter_references(text):
        try:
            lookup(selector)
        except KeyError:
            raise NodeError(
                f"{label}: variable {{{{#{selector_key(selector)}#}}}} not found",
                error_type="VariableNotFoundError",
            ) from None


def _jinja2_values(config: Any, lookup: Lookup, *, label: str) -> dict[str, Any]:
    items = config.get("jinja2_variables") if isinstance(config, Mapping) else None
    values: dict[str, Any] = {}
    for item in items or []:
        if not isinstance(item, Mapping) or not item.get("variable"):
            continue
        selector = item.get("value_selector")
        if not isinstance(selector, Sequence) or isinstance(selector, str) or len(selector) < 2:
            continue
        try:
            value = lookup([str(part) for part in selector])
        except KeyError:
            raise NodeError(
                f"{label}: jinja2 variable {item['variable']!r} "
                f"({selector_key([str(part) for part in selector])}) not found",
                error_type="VariableNotFoundError",
            ) from None
        values[str(item["variable"])] = value
    return values


def _memory_query(memory: Any, lookup: Lookup) -> str | None:
    if not isinstance(memory, Mapping):
        return None
    template = memory.get("query_prompt_template")
    if isinstance(template, str) and template:
        return template
    query = resolve_or_none(lookup, ["sys", "query"])
    return query if isinstance(query, str) and query else None


def _histories_text(memory: Any, history: Sequence[Mapping[str, str]], *, label: str) -> str:
    if not isinstance(memory, Mapping) or not history:
        return ""
    prefix = memory.get("role_prefix")
    if not isinstance(prefix, Mapping):
        raise NodeError(
            f"{label}: memory.role_prefix (user, assistant) is required for a completion "
            "model's memory",
            error_type="MemoryRolePrefixRequiredError",
        )
    return history_text(
        history,
        human_prefix=str(prefix.get("user") or ""),
        assistant_prefix=str(prefix.get("assistant") or ""),
    )
