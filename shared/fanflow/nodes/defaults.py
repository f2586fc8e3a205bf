"""Typed `default_value` entries of a node's `error_strategy: default-value`.

Exports store them as text for non-string types; Dify decodes and checks them when the
workflow loads (its `DefaultValue` model): numbers given as text go through `float()`,
so `"5"` becomes `5.0`; objects and arrays are JSON; `array[file]` is taken as given.
"""

from __future__ import annotations

import json
from typing import Any

_ELEMENT_TYPES: dict[str, tuple[type, ...]] = {
    "array[number]": (int, float),
    "array[string]": (str,),
    "array[object]": (dict,),
}
SUPPORTED_TYPES = frozenset({"string", "number", "object", "array[file]", *_ELEMENT_TYPES})


def coerce_default(type: str, value: Any) -> Any:
    """Decode and check one default value; ValueError says what was wrong.

    The caller (the DSL loader) turns the ValueError into a problem at the node.
    """
    if type not in SUPPORTED_TYPES:
        raise ValueError(
            f"default value type must be one of {sorted(SUPPORTED_TYPES)}, got {type!r}"
        )
    if type == "array[file]":
        return value
    if type == "string":
        if not isinstance(value, str):
            raise ValueError(f"default value of type string must be text, got {value!r}")
        return value
    if isinstance(value, str):
        value = _decode(type, value)
    if type == "number":
        if not isinstance(value, int | float):
            raise ValueError(f"default value of type number must be a number, got {value!r}")
        return value
    if type == "object":
        if not isinstance(value, dict):
            raise ValueError(f"default value of type object must be an object, got {value!r}")
        return value
    element = _ELEMENT_TYPES[type]
    if not isinstance(value, list) or not all(isinstance(item, element) for item in value):
        raise ValueError(f"default value of type {type} must be a list of that type, got {value!r}")
    return value


def _decode(value_type: str, text: str) -> Any:
    if value_type == "number":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"default value of type number is not a number: {text!r}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"default value of type {value_type} is not valid JSON ({exc}): {text!r}"
        ) from None
