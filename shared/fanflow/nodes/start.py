"""Start-node inputs, prepared as Dify's app layer does before a run starts.

Learned from Dify's `BaseAppGenerator._validate_inputs` / `_prepare_user_inputs`:
only a missing or null value counts as "not given" (an empty string is a value), a
missing optional input takes its `default`, which is then validated like a given value,
and a blank number becomes null even when required.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fanflow.errors import InputsInvalid

_TEXT_TYPES = frozenset({"text-input", "paragraph", "select"})
_FILE_TYPES = frozenset({"file", "file-list"})
_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})
_KNOWN_TYPES = _TEXT_TYPES | _FILE_TYPES | {"number", "checkbox", "json_object"}


def prepare_inputs(
    variables: Sequence[Mapping[str, Any]], inputs: Mapping[str, Any]
) -> dict[str, Any]:
    """Every declared start variable with its checked value; undeclared inputs dropped.

    Raises InputsInvalid naming the variable and what was expected.
    """
    inputs = inputs or {}
    prepared: dict[str, Any] = {}
    for variable in variables:
        name = str(variable.get("variable"))
        value = _validate(variable, name, inputs.get(name))
        prepared[name] = value.replace("\x00", "") if isinstance(value, str) else value
    return prepared


def _validate(variable: Mapping[str, Any], name: str, value: Any) -> Any:
    kind = str(variable.get("type") or "text-input")
    required = bool(variable.get("required"))
    if kind not in _KNOWN_TYPES:
        raise InputsInvalid(f"{name} has an unsupported input type '{kind}'", variable=name)
    if value is None:
        if required:
            raise InputsInvalid(f"{name} is required in input form", variable=name)
        value = variable.get("default")
        if value is None:
            return None
    if kind in _FILE_TYPES and not required and value == "":
        return None
    if kind in _TEXT_TYPES and not isinstance(value, str):
        raise InputsInvalid(
            f"(type '{kind}') {name} in input form must be a string, got {type(value).__name__}",
            variable=name,
        )
    checker = _CHECKERS.get(kind)
    return checker(variable, name, value) if checker else value


def _number(variable: Mapping[str, Any], name: str, value: Any) -> Any:
    if isinstance(value, int | float):  # Dify lets a boolean through here too
        return value
    if not isinstance(value, str):
        raise InputsInvalid(
            f"{name} in input form must be a number, got {type(value).__name__}", variable=name
        )
    if not value.strip():
        return None
    try:
        return float(value) if "." in value else int(value)
    except ValueError:
        raise InputsInvalid(f"{name} in input form must be a valid number", variable=name) from None


def _select(variable: Mapping[str, Any], name: str, value: Any) -> Any:
    options = list(variable.get("options") or [])
    if value not in options:
        raise InputsInvalid(
            f"{name} in input form must be one of the following: {options}", variable=name
        )
    return value


def _text(variable: Mapping[str, Any], name: str, value: Any) -> Any:
    return _within_max_length(variable, name, value, "characters")


def _file(variable: Mapping[str, Any], name: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise InputsInvalid(f"{name} in input form must be a file", variable=name)
    return value


def _file_list(variable: Mapping[str, Any], name: str, value: Any) -> Any:
    if not (isinstance(value, list) and all(isinstance(item, Mapping) for item in value)):
        raise InputsInvalid(f"{name} in input form must be a list of files", variable=name)
    return _within_max_length(variable, name, value, "files")


def _checkbox(variable: Mapping[str, Any], name: str, value: Any) -> Any:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    elif isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, Mapping) or (
        isinstance(value, list) and any(isinstance(item, Mapping) for item in value)
    ):
        raise InputsInvalid(f"Invalid input type for ['{name}']", variable=name)
    return value  # Dify keeps other words as they are


def _json_object(variable: Mapping[str, Any], name: str, value: Any) -> Any:
    # "" is what a form sends for an unfilled field; anything else must be an object
    if value != "" and not isinstance(value, Mapping):
        raise InputsInvalid(
            f"{name} in input form must be a dict (a JSON object), got {type(value).__name__}",
            variable=name,
        )
    return value


def _within_max_length(variable: Mapping[str, Any], name: str, value: Any, unit: str) -> Any:
    """`value` when it is no longer than the variable's `max_length` (in `unit`s)."""
    max_length = _max_length(variable)
    if max_length and len(value) > max_length:
        raise InputsInvalid(
            f"{name} in input form must be less than {max_length} {unit}", variable=name
        )
    return value


def _max_length(variable: Mapping[str, Any]) -> int:
    raw = variable.get("max_length")
    try:
        return int(raw) if raw else 0
    except (TypeError, ValueError):
        return 0


_CHECKERS = {
    "number": _number,
    "select": _select,
    "text-input": _text,
    "paragraph": _text,
    "file": _file,
    "file-list": _file_list,
    "checkbox": _checkbox,
    "json_object": _json_object,
}
