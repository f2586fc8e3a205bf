"""Reading JSON out of model replies, and checking it against a JSON schema.

Models wrap JSON in prose or Markdown fences; `find_object` takes the first JSON object in
the text. `schema_error` checks the parts of JSON Schema that structured output uses
(type, enum, const, required, properties, additionalProperties: false, items) — not all
of Draft 7, which would need a dependency for little gain.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)
_DECODER = json.JSONDecoder()


def find_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (whole, fenced, or embedded in prose), else None.

    A one-element array holding an object counts as that object, as Dify reads it.
    """
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    for start, char in enumerate(stripped):
        if char not in "{[":
            continue
        try:
            value, _ = _DECODER.raw_decode(stripped, start)
        except ValueError:
            continue
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, dict):
            return value
    return None


def parse_object(text: str) -> dict[str, Any]:
    """`text` as the JSON object structured output asked for; ValueError says what is wrong."""
    try:
        value = json.loads(text)
    except ValueError:
        value = find_object(text)
        if value is None:
            raise ValueError(f"the reply is not a JSON object: {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the reply is JSON but not an object: {type(value).__name__}")
    return value


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def schema_error(value: Any, schema: Any, path: str = "$") -> str | None:
    """Where and how `value` breaks `schema`, or None when it follows it."""
    if not isinstance(schema, Mapping):
        return None
    kinds = schema.get("type")
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        if not any(_is_type(value, str(name)) for name in names):
            return f"{path}: expected {' or '.join(map(str, names))}, got {_json_type(value)}"
    if "const" in schema and value != schema["const"]:
        return f"{path}: expected {schema['const']!r}"
    if isinstance(schema.get("enum"), list) and value not in schema["enum"]:
        return f"{path}: {value!r} is not one of {schema['enum']!r}"
    if isinstance(value, dict):
        return _object_error(value, schema, path)
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            error = schema_error(item, schema["items"], f"{path}[{index}]")
            if error:
                return error
    return None


def _object_error(value: dict[str, Any], schema: Mapping[str, Any], path: str) -> str | None:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    for name in schema.get("required") or []:
        if name not in value:
            return f"{path}: required property {name!r} is missing"
    if schema.get("additionalProperties") is False:
        extra = sorted(set(value) - set(properties))
        if extra:
            return f"{path}: unexpected property {extra[0]!r}"
    for name, sub in properties.items():
        if name in value:
            error = schema_error(value[name], sub, f"{path}.{name}")
            if error:
                return error
    return None


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("number", "integer"):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(name, (object,)))


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, name):
            return name
    return type(value).__name__
