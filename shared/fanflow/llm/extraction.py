"""Parameter extraction: the parameters' JSON schema, the prompts, and reading the answer.

Follows Dify's parameter-extractor: the model's answer (tool call arguments, or the first
JSON object in its text) is checked — every parameter present, of its type, a `select`
among its options — and the first problem becomes `__reason` with `__is_success: 0`; the
node still succeeds. Values are then coerced to their type (numbers from text, booleans
from 0/1), and a missing or unusable value becomes the type's empty value ("", 0, false, []).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fanflow.errors import NodeError

TOOL_NAME = "extract_parameters"
_UNSET: Any = object()
#: DSL type → (JSON schema type, array element type or None)
_TYPES: dict[str, tuple[str, str | None]] = {
    "string": ("string", None),
    "select": ("string", None),
    "number": ("number", None),
    "bool": ("boolean", None),
    "boolean": ("boolean", None),
    "array[string]": ("array", "string"),
    "array[number]": ("array", "number"),
    "array[object]": ("array", "object"),
    "array[boolean]": ("array", "boolean"),
}
_EMPTY: dict[str, Any] = {"string": "", "number": 0, "boolean": False}
RESERVED_NAMES = frozenset({"__is_success", "__reason", "__usage"})


@dataclass(frozen=True)
class Parameter:
    name: str
    kind: str  # JSON schema type: string, number, boolean, array
    item_kind: str | None
    description: str
    required: bool
    options: tuple[str, ...]

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"description": self.description, "type": self.kind}
        if self.item_kind:
            schema["items"] = {"type": self.item_kind}
        if self.options:
            schema["enum"] = list(self.options)
        return schema

    def empty(self) -> Any:
        return [] if self.kind == "array" else _EMPTY[self.kind]


def parameters_of(data: Mapping[str, Any], *, label: str) -> list[Parameter]:
    """The node's `parameters`, checked; a bad declaration fails the node."""
    found: list[Parameter] = []
    for index, item in enumerate(data.get("parameters") or []):
        where = f"{label}: parameters[{index}]"
        if not isinstance(item, Mapping) or not item.get("name"):
            raise NodeError(f"{where} needs a name", error_type="ParameterExtractorNodeError")
        name = str(item["name"])
        if name in RESERVED_NAMES:
            raise NodeError(
                f"{where}: the name {name!r} is reserved", error_type="ParameterExtractorNodeError"
            )
        kind = str(item.get("type") or "")
        if kind not in _TYPES:
            raise NodeError(
                f"{where} ({name}): type {kind!r} is not one of {', '.join(_TYPES)}",
                error_type="ParameterExtractorNodeError",
            )
        options = item.get("options") or []
        found.append(
            Parameter(
                name=name,
                kind=_TYPES[kind][0],
                item_kind=_TYPES[kind][1],
                description=str(item.get("description") or ""),
                required=bool(item.get("required")),
                options=tuple(str(option) for option in options),
            )
        )
    return found


def parameters_schema(parameters: list[Parameter]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {p.name: p.schema() for p in parameters},
        "required": [p.name for p in parameters if p.required],
    }


# ---- prompts (fanflow's own wording; same intent as Dify's) ----------------------------

#: how each system prompt ends: the workflow author's instruction
_AUTHOR_INSTRUCTION = """\
Follow these instructions from the workflow author as closely as you can:
<instruction>
{instruction}
</instruction>"""

_FUNCTION_SYSTEM = (
    """\
You extract structured data from text. Call the `{tool}` function exactly once. Its \
arguments must follow the function's JSON schema: one entry per parameter, each of the \
declared type. Take every value from the text itself; when the schema asks for a list, \
include every matching value the text holds.
"""
    + _AUTHOR_INSTRUCTION
)

_FUNCTION_USER = """\
Call `{tool}` with the parameters found in the text between the <text> tags. The \
arguments follow this JSON schema:
<schema>
{schema}
</schema>
<text>
{query}
</text>"""

_JSON_SYSTEM = (
    """\
You turn text into one JSON object. Reply with that object only: no prose, no Markdown \
fences, no XML tags. The JSON schema in the user's message gives its keys and the type \
of each value; include every key, with values taken from the text.
"""
    + _AUTHOR_INSTRUCTION
)

_JSON_USER = """\
JSON schema of the object to produce:
<schema>
{schema}
</schema>
Text to read:
<text>
{query}
</text>"""

_EXAMPLE_SCHEMA = {
    "type": "object",
    "properties": {
        "party_size": {"type": "number", "description": "How many guests"},
        "time": {"type": "string", "description": "Time of the booking, HH:MM"},
    },
    "required": ["party_size", "time"],
}
_EXAMPLE_QUERY = "Could you book a table for four at 7:30 in the evening?"
_EXAMPLE_ANSWER = {"party_size": 4, "time": "19:30"}


def function_call_messages(
    query: str, instruction: str, schema: dict[str, Any]
) -> list[dict[str, Any]]:
    return [
        {
            "role": "system",
            "content": _FUNCTION_SYSTEM.format(tool=TOOL_NAME, instruction=instruction),
        },
        {
            "role": "user",
            "content": _FUNCTION_USER.format(
                tool=TOOL_NAME, schema=json.dumps(schema, ensure_ascii=False), query=query
            ),
        },
    ]


def extraction_tool(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Extract parameters from the natural language text",
            "parameters": schema,
        },
    }


def json_prompt_messages(
    query: str, instruction: str, schema: dict[str, Any], *, chat: bool
) -> list[dict[str, Any]]:
    system = _JSON_SYSTEM.format(instruction=instruction)
    user = _JSON_USER.format(schema=json.dumps(schema, ensure_ascii=False), query=query)
    if not chat:  # completion model: one prompt
        return [{"role": "user", "content": f"{system}\n\n{user}\n\nJSON object:"}]
    example = _JSON_USER.format(schema=json.dumps(_EXAMPLE_SCHEMA), query=_EXAMPLE_QUERY)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": example},
        {"role": "assistant", "content": json.dumps(_EXAMPLE_ANSWER)},
        {"role": "user", "content": user},
    ]


# ---- reading the answer --------------------------------------------------------------


def check_result(parameters: list[Parameter], result: Mapping[str, Any]) -> str | None:
    """The first problem with the model's answer (Dify's order and wording), or None."""
    if len(parameters) != len(result):
        return "Invalid number of parameters"
    for p in parameters:
        if p.required and p.name not in result:
            return f"Parameter {p.name} is required"
        value = result.get(p.name)
        if not _is_valid(p, value):
            return (
                f"Invalid value for parameter {p.name}: expected {p.kind}"
                f"{f' of {p.item_kind}' if p.item_kind else ''}, got {json.dumps(value)}"
            )
        if p.kind == "string" and p.options and value not in p.options:
            return f"Invalid `select` value for parameter {p.name}"
    return None


def coerce_result(parameters: list[Parameter], result: Mapping[str, Any]) -> dict[str, Any]:
    """Each parameter's value in its type; missing or unusable → the type's empty value."""
    coerced: dict[str, Any] = {}
    for p in parameters:
        value = _UNSET
        if p.name in result:
            raw = result[p.name]
            value = _coerce_array(p.item_kind, raw) if p.kind == "array" else _coerce(p.kind, raw)
        coerced[p.name] = p.empty() if value is _UNSET else value
    return coerced


def _is_valid(p: Parameter, value: Any) -> bool:
    if p.kind == "array":
        return isinstance(value, list) and all(_is_scalar(p.item_kind, item) for item in value)
    return _is_scalar(p.kind, value)


def _is_scalar(kind: str | None, value: Any) -> bool:
    if kind == "number":
        return isinstance(value, int | float)  # Dify counts booleans as numbers
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "object":
        return isinstance(value, dict)
    return False


def _coerce(kind: str | None, value: Any) -> Any:
    if kind == "number":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int | float):
            return value
        if isinstance(value, str):
            try:
                return float(value) if "." in value else int(value)
            except ValueError:
                return _UNSET
        return _UNSET
    if kind == "boolean":
        return bool(value) if isinstance(value, bool | int) else _UNSET
    if kind == "string":
        return value if isinstance(value, str) else _UNSET
    if kind == "object":
        return value if isinstance(value, dict) else _UNSET
    return _UNSET


def _coerce_array(item_kind: str | None, value: Any) -> Any:
    if not isinstance(value, list):
        return _UNSET
    items = []
    for item in value:
        # in arrays only true booleans count (Dify: 0/1 are not array[boolean] items)
        if item_kind == "boolean" and not isinstance(item, bool):
            continue
        coerced = _coerce(item_kind, item)
        if coerced is not _UNSET:
            items.append(coerced)
    return items
