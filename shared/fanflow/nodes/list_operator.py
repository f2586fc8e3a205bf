"""List operator: filter, extract, order and limit an array, in that order (Dify's).

Only arrays of strings, numbers, booleans or files are accepted (Dify refuses
`array[object]`). A null or empty input gives an empty result. Quirks kept from Dify:
`extract_by.serial` is 1-based and applied before ordering, an enabled `limit` with the
default size -1 drops the last element, and string `in`/`not in` test substrings of the
value text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fanflow.errors import NodeError
from fanflow.nodes.conditions import render_condition_value
from fanflow.nodes.files import file_attribute, is_file
from fanflow.variables import Lookup

_ERROR_TYPE = "ListOperatorError"
_FILE_STRING_KEYS = frozenset({"name", "extension", "mime_type", "url", "related_id"})
_FILE_CHOICE_KEYS = frozenset({"type", "transfer_method"})
_FILE_ORDER_KEYS = _FILE_STRING_KEYS | _FILE_CHOICE_KEYS | {"size"}

Predicate = Callable[[Any], bool]


def _error(message: str) -> NodeError:
    return NodeError(message, error_type=_ERROR_TYPE)


def operate_list(data: Mapping[str, Any], lookup: Lookup) -> dict[str, Any]:
    """`{result, first_record, last_record}` for a list-operator node."""
    selector = list(data.get("variable") or [])
    try:
        value = lookup(selector)
    except KeyError:
        raise _error(f"Variable not found for selector: {selector}") from None
    if not value:
        return _outputs([])
    kind = _element_kind(value)
    if kind is None:
        raise _error(
            f"variable {selector} must be an array of strings, numbers, booleans or files, "
            f"got {_describe(value)}"
        )
    items = list(value)
    if _enabled(data, "filter_by"):
        for condition in data["filter_by"].get("conditions") or []:
            predicate = _filter_predicate(kind, condition, lookup)
            items = [item for item in items if predicate(item)]
    if _enabled(data, "extract_by"):
        items = _extract(items, data["extract_by"].get("serial", "1"), lookup)
    if _enabled(data, "order_by"):
        items = _order(items, kind, data["order_by"])
    if _enabled(data, "limit"):
        items = items[: _as_int(data["limit"].get("size", -1), "limit.size")]
    return _outputs(items)


def _outputs(items: list[Any]) -> dict[str, Any]:
    return {
        "result": items,
        "first_record": items[0] if items else None,
        "last_record": items[-1] if items else None,
    }


def _enabled(data: Mapping[str, Any], key: str) -> bool:
    section = data.get(key)
    return isinstance(section, Mapping) and bool(section.get("enabled"))


def _element_kind(value: Any) -> str | None:
    if not isinstance(value, list):
        return None
    if all(isinstance(item, str) for item in value):
        return "string"
    if all(isinstance(item, bool) for item in value):
        return "boolean"
    if all(isinstance(item, int | float) and not isinstance(item, bool) for item in value):
        return "number"
    if all(is_file(item) for item in value):
        return "file"
    return None


def _describe(value: Any) -> str:
    if isinstance(value, list):
        if all(isinstance(item, Mapping) for item in value):
            return "array[object]"
        return "an array of mixed or nested elements"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _as_int(value: Any, field: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _error(f"{field} must be an integer, got {value!r}") from None


def _text_value(value: Any, lookup: Lookup) -> str | None:
    """The condition value as text with references rendered; None if it is not text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    return render_condition_value(value, lookup) if isinstance(value, str) else None


# --- filters -------------------------------------------------------------------------


def _filter_predicate(kind: str, condition: Mapping[str, Any], lookup: Lookup) -> Predicate:
    operator = str(condition.get("comparison_operator") or "contains")
    raw = condition.get("value", "")
    if kind in ("string", "number"):
        text = _text_value(raw, lookup)
        if text is None:
            raise _error(f"Invalid filter value: {raw!r} (expected text)")
        if kind == "string":
            return _string_predicate(operator, text)
        return _number_predicate(operator, _to_number(text))
    if kind == "boolean":
        if not isinstance(raw, bool):
            raise _error(f"Boolean filter expects a boolean value, got {raw!r}")
        return _boolean_predicate(operator, raw)
    return _file_predicate(condition, operator, raw, lookup)


def _to_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _error(f"filter value must be a number, got {text!r}") from None


def _string_predicate(operator: str, value: Any) -> Predicate:
    builders: dict[str, Predicate] = {
        "empty": lambda x: not x,
        "not empty": lambda x: bool(x),
        "contains": lambda x: value in x,
        "not contains": lambda x: value not in x,
        "start with": lambda x: x.startswith(value),
        "end with": lambda x: x.endswith(value),
        "is": lambda x: x == value,
        "is not": lambda x: x != value,
        "in": lambda x: x in value,
        "not in": lambda x: x not in value,
    }
    if operator not in builders:
        raise _error(f"Invalid condition: {operator}")
    return builders[operator]


def _number_predicate(operator: str, value: float) -> Predicate:
    builders: dict[str, Predicate] = {
        "=": lambda x: x == value,
        "≠": lambda x: x != value,
        "<": lambda x: x < value,
        "≤": lambda x: x <= value,
        ">": lambda x: x > value,
        "≥": lambda x: x >= value,
    }
    if operator not in builders:
        raise _error(f"Invalid condition: {operator}")
    return builders[operator]


def _boolean_predicate(operator: str, value: bool) -> Predicate:
    if operator == "is":
        return lambda x: x == value
    if operator == "is not":
        return lambda x: x != value
    raise _error(f"Invalid condition: {operator}")


def _file_predicate(
    condition: Mapping[str, Any], operator: str, raw: Any, lookup: Lookup
) -> Predicate:
    key = str(condition.get("key") or "")
    if isinstance(raw, bool):
        raise _error(f"File filter expects a string value, got {raw!r}")
    value = _text_value(raw, lookup)
    if value is None:
        value = raw
    if key in _FILE_STRING_KEYS and isinstance(value, str):
        check = _string_predicate(operator, value)
        return lambda f: check(_file_text(f, key))
    if key in _FILE_CHOICE_KEYS:
        if operator not in ("in", "not in"):
            raise _error(f"Invalid condition: {operator}")
        check = _string_predicate(operator, value)
        return lambda f: check(_file_text(f, key))
    if key == "size" and isinstance(value, str):
        check = _number_predicate(operator, _to_number(value))
        return lambda f: check(file_attribute(f, "size"))
    raise _error(f"Invalid key: {key}")


def _file_text(file: Mapping[str, Any], key: str) -> str:
    value = file_attribute(file, key)
    return "" if value is None else str(value)


# --- extract and order ---------------------------------------------------------------


def _extract(items: list[Any], serial: Any, lookup: Lookup) -> list[Any]:
    text = render_condition_value(str(serial), lookup).strip()
    try:
        index = int(text)
    except ValueError:
        raise _error(f"extract_by.serial must be an integer, got {text!r}") from None
    if index < 1:
        raise _error(f"Invalid serial index: must be >= 1, got {index}")
    if index > len(items):
        raise _error(f"Invalid serial index: must be <= {len(items)}, got {index}")
    return [items[index - 1]]


def _order(items: list[Any], kind: str, order_by: Mapping[str, Any]) -> list[Any]:
    descending = order_by.get("value") == "desc"
    if kind != "file":
        return sorted(items, reverse=descending)
    key = str(order_by.get("key") or "")
    if key not in _FILE_ORDER_KEYS:
        raise _error(f"Invalid order key: {key}")
    extract: Callable[[Any], Any] = (
        (lambda f: file_attribute(f, "size")) if key == "size" else (lambda f: _file_text(f, key))
    )
    return sorted(items, key=extract, reverse=descending)
