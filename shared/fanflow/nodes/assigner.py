"""Variable assigner (v1 and v2): plan the writes a node makes, without applying them.

The target's declared type decides which operations and inputs are allowed (Dify's
rules): `types` gives the declared `value_type` of conversation and loop variables; a
target missing from it is typed from its current value. Within one v2 node, later items
see earlier writes. A v2 item whose input variable holds null is skipped silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fanflow.errors import NodeError
from fanflow.nodes.files import is_file
from fanflow.variables import Lookup, Selector, walk_path

_ERROR_TYPE = "VariableOperatorNodeError"

_NUMBER_TYPES = frozenset({"number", "integer", "float"})
_ARRAY_TYPES = frozenset(
    {
        "array[any]",
        "array[string]",
        "array[number]",
        "array[object]",
        "array[file]",
        "array[boolean]",
    }
)
_OPERATIONS = frozenset(
    {
        "over-write",
        "clear",
        "append",
        "extend",
        "set",
        "+=",
        "-=",
        "*=",
        "/=",
        "remove-first",
        "remove-last",
    }
)
_ARITHMETIC = frozenset({"+=", "-=", "*=", "/="})
_NO_INPUT = frozenset({"clear", "remove-first", "remove-last"})
_SETTABLE = frozenset({"object", "string", "boolean"}) | _NUMBER_TYPES
_SCALAR_INPUT: Mapping[str, type | tuple[type, ...]] = {
    "string": str,
    "boolean": bool,
    "object": dict,
}
_ELEMENT_INPUT: Mapping[str, type | tuple[type, ...]] = {
    "array[any]": (str, float, int, dict),
    "array[string]": str,
    "array[number]": (int, float),
    "array[object]": dict,
    "array[boolean]": bool,
}

Write = tuple[Selector, Any]


def _error(message: str, selector: Sequence[str]) -> NodeError:
    return NodeError(f"{message} (variable {'.'.join(selector)})", error_type=_ERROR_TYPE)


class _Pending:
    """A lookup with this node's writes layered over the run's values."""

    def __init__(self, lookup: Lookup, types: Mapping[Selector, str]) -> None:
        self._lookup = lookup
        self._declared = dict(types)
        self._resolved: dict[Selector, str] = {}
        self.writes: dict[Selector, Any] = {}

    def __call__(self, selector: Sequence[str]) -> Any:
        head = tuple(selector[:2])
        if head in self.writes:
            return walk_path(self.writes[head], selector[2:])
        return self._lookup(selector)

    def target(self, selector: Sequence[str]) -> tuple[Selector, Any, str]:
        """Current value and declared type of an assignable variable; KeyError if absent."""
        if len(selector) != 2:
            raise KeyError(".".join(selector))
        key = (str(selector[0]), str(selector[1]))
        value = self(key)
        if key not in self._resolved:
            # Fixed at first sight: a variable keeps its type through writes, as in Dify,
            # where a declared "number" is an integer or a float variable by its value.
            declared = self._declared.get(key) or infer_type(value)
            if declared == "number":
                declared = "float" if isinstance(value, float) else "integer"
            self._resolved[key] = declared
        return key, value, self._resolved[key]


def infer_type(value: Any) -> str:
    """The `value_type` Dify would give a variable holding `value`."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "file" if is_file(value) else "object"
    if isinstance(value, list):
        if not value:
            return "array[any]"
        element_types = {infer_type(item) for item in value}
        if element_types <= {"integer", "float"}:
            return "array[number]"
        if len(element_types) == 1:
            only = element_types.pop()
            mapping = {"string": "array[string]", "boolean": "array[boolean]"}
            mapping |= {"object": "array[object]", "file": "array[file]"}
            return mapping.get(only, "array[any]")
        return "array[any]"
    return "none"


def zero_value(value_type: str, current: Any = None) -> Any:
    """What `clear` leaves in a variable of `value_type`; ValueError for a type with none."""
    if value_type in _ARRAY_TYPES and value_type != "array[file]":
        return []
    if value_type == "number":  # declared but not resolved to integer or float
        return 0.0 if isinstance(current, float) else 0
    zeros: dict[str, Any] = {
        "object": {},
        "string": "",
        "integer": 0,
        "float": 0.0,
        "boolean": False,
    }
    if value_type not in zeros:
        raise ValueError(f"unsupported variable type: {value_type}")
    return zeros[value_type]


def plan_assignments(
    data: Mapping[str, Any],
    lookup: Lookup,
    *,
    version: int | str,
    types: Mapping[Selector, str] | None = None,
) -> list[Write]:
    """The `(target selector, new value)` writes of an assigner node, in first-write order.

    Each target appears once with its final value. Raises NodeError naming the variable
    on any refused operation.
    """
    pending = _Pending(lookup, {tuple(k): v for k, v in (types or {}).items()})
    if str(version) == "1":
        _plan_v1(data, pending)
    else:
        for item in data.get("items") or []:
            _plan_item(item, pending)
    return list(pending.writes.items())


def _plan_v1(data: Mapping[str, Any], pending: _Pending) -> None:
    selector = list(data.get("assigned_variable_selector") or [])
    try:
        key, current, value_type = pending.target(selector)
    except KeyError:
        raise _error("assigned variable not found", selector) from None
    mode = data.get("write_mode")
    if mode == "clear":
        pending.writes[key] = _zero(value_type, current, selector)
        return
    if mode not in ("over-write", "append"):
        raise _error(f"write_mode must be over-write, append or clear, got {mode!r}", selector)
    source = list(data.get("input_variable_selector") or [])
    try:
        if len(source) < 2:
            raise KeyError(".".join(source))
        incoming = pending(source)
    except KeyError:
        raise _error(f"input value not found: {source}", selector) from None
    if mode == "over-write":
        pending.writes[key] = incoming
    elif value_type not in _ARRAY_TYPES:
        raise _error(f"append mode requires an array variable, it is {value_type}", selector)
    else:
        pending.writes[key] = [*current, incoming]


def _plan_item(item: Mapping[str, Any], pending: _Pending) -> None:
    selector = list(item.get("variable_selector") or [])
    operation = item.get("operation")
    if operation not in _OPERATIONS:
        raise _error(f"operation {operation!r} is not supported", selector)
    try:
        key, current, value_type = pending.target(selector)
    except KeyError:
        raise _error(f"Variable {selector} not found", selector) from None
    if not _operation_supported(value_type, operation):
        raise _error(f"Operation {operation} is not supported for type {value_type}", selector)
    input_type = item.get("input_type")
    if input_type == "variable" and (operation == "set" or operation in _ARITHMETIC):
        raise _error(f"Input type variable is not supported for operation {operation}", selector)
    if input_type == "constant" and not _constant_supported(value_type, operation):
        raise _error(f"Input type constant is not supported for operation {operation}", selector)

    value = item.get("value")
    if input_type == "variable" and operation not in _NO_INPUT and value is not None:
        if not isinstance(value, list) or len(value) < 2:
            raise _error(f"value must be a variable selector, got {value!r}", selector)
        try:
            value = pending(value)
        except KeyError:
            raise _error(f"Variable {value} not found", selector) from None
        if value is None:
            return
    if operation == "set" and value_type == "object" and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _error(f"Invalid input value {value!r}: not a JSON object", selector) from None
    if not _input_valid(value_type, operation, value):
        raise _error(f"Invalid input value {value!r} for {operation} on {value_type}", selector)
    pending.writes[key] = _apply(operation, value_type, current, value, selector)


def _operation_supported(value_type: str, operation: str) -> bool:
    if operation in ("over-write", "clear"):
        return True
    if operation == "set":
        return value_type in _SETTABLE
    if operation in _ARITHMETIC:
        return value_type in _NUMBER_TYPES
    return value_type in _ARRAY_TYPES  # append, extend, remove-first, remove-last


def _constant_supported(value_type: str, operation: str) -> bool:
    if value_type in ("string", "object", "boolean"):
        return operation in ("over-write", "set")
    if value_type in _NUMBER_TYPES:
        return operation in ("over-write", "set") or operation in _ARITHMETIC
    return False


def _input_valid(value_type: str, operation: str, value: Any) -> bool:
    if operation in _NO_INPUT:
        return True
    if value_type in _NUMBER_TYPES:
        return isinstance(value, int | float) and not (operation == "/=" and value == 0)
    scalar = _SCALAR_INPUT.get(value_type)
    if scalar is not None and isinstance(value, scalar):
        return True
    element = _ELEMENT_INPUT.get(value_type)
    if element is None:
        return False
    if operation == "append":
        return isinstance(value, element)
    if operation in ("extend", "over-write"):
        return isinstance(value, list) and all(isinstance(v, element) for v in value)
    return False


def _apply(
    operation: str, value_type: str, current: Any, value: Any, selector: Sequence[str]
) -> Any:
    if operation in ("over-write", "set"):
        return value
    if operation == "clear":
        return _zero(value_type, current, selector)
    if operation in ("remove-first", "remove-last"):
        if not current:
            return current
        return current[1:] if operation == "remove-first" else current[:-1]
    try:
        if operation == "append":
            return [*current, value]
        if operation in ("extend", "+="):
            return current + value
        if operation == "-=":
            return current - value
        if operation == "*=":
            return current * value
        return current / value
    except (TypeError, ArithmeticError) as exc:
        raise _error(f"{operation} failed on {current!r}: {exc}", selector) from None


def _zero(value_type: str, current: Any, selector: Sequence[str]) -> Any:
    try:
        return zero_value(value_type, current)
    except ValueError as exc:
        raise _error(str(exc), selector) from None
