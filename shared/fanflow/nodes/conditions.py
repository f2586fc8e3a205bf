"""If-else cases and loop break conditions, evaluated as Dify's condition processor does.

A condition is `{variable_selector, comparison_operator, value, sub_variable_condition?}`.
Dify's type rules are kept on purpose, surprising ones included: `=` on a string fails
the node, `is not` on a null is false, `contains` on a null is false while `not contains`
is true, a number compared with `=` converts the expected text with `int()` (so `"3.5"`
fails against an integer), and a boolean variable's expected value must be JSON
`true`/`false`/a number even for unary operators.

Errors raise `NodeError`. Those with `error_type == TYPE_ERROR` are the ones Dify raises as
`TypeError`; a loop's break check before its first round swallows the others only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fanflow.errors import NodeError
from fanflow.nodes.files import FILE_ATTRIBUTES, is_file, item_attribute
from fanflow.variables import Lookup, render

VALUE_ERROR = "ConditionError"
TYPE_ERROR = "ConditionTypeError"

_UNARY = frozenset({"empty", "not empty", "null", "not null", "exists", "not exists"})
_EXISTENCE = frozenset({"exists", "not exists"})
_SUB_CONDITION_OPERATORS = frozenset({"contains", "not contains", "all of"})


def _value_error(message: str) -> NodeError:
    return NodeError(message, error_type=VALUE_ERROR)


def _type_error(message: str) -> NodeError:
    return NodeError(message, error_type=TYPE_ERROR)


def evaluate_cases(data: Mapping[str, Any], lookup: Lookup) -> str:
    """The handle an if-else node takes: the first true case's id, else ``"false"``.

    Without `cases`, the legacy top-level `conditions` + `logical_operator` form one case
    whose id is ``"true"``. A case with no conditions is true under ``and`` and false
    under ``or``.
    """
    cases = data.get("cases")
    if cases is None:
        legacy = {
            "case_id": "true",
            "logical_operator": data.get("logical_operator") or "and",
            "conditions": data.get("conditions") or [],
        }
        cases = [legacy]
    for case in cases:
        conditions = case.get("conditions") or []
        if _evaluate_group(conditions, case.get("logical_operator") or "and", lookup):
            return str(case.get("case_id"))
    return "false"


def evaluate_break(
    conditions: Sequence[Mapping[str, Any]], logical_operator: str, lookup: Lookup
) -> bool:
    """Whether a loop's break conditions hold; no conditions never break."""
    if not conditions:
        return False
    return _evaluate_group(conditions, logical_operator or "and", lookup)


def _evaluate_group(conditions: Sequence[Mapping[str, Any]], operator: str, lookup: Lookup) -> bool:
    if operator not in ("and", "or"):
        raise _value_error(f"logical_operator must be 'and' or 'or', got {operator!r}")
    # Short-circuits like Dify: a later condition's error never surfaces once decided.
    for condition in conditions:
        result = evaluate_condition(condition, lookup)
        if operator == "and" and not result:
            return False
        if operator == "or" and result:
            return True
    return operator == "and"


def evaluate_condition(condition: Mapping[str, Any], lookup: Lookup) -> bool:
    """Evaluate one condition; a missing variable fails the node (Dify: "not found")."""
    operator = str(condition.get("comparison_operator"))
    if operator not in _EVALUATORS:
        raise _value_error(f"Unsupported comparison_operator: {operator!r}")
    selector = list(condition.get("variable_selector") or [])
    try:
        actual = lookup(selector)
    except KeyError:
        raise _value_error(f"Variable {selector} not found") from None

    sub = condition.get("sub_variable_condition")
    if operator in _SUB_CONDITION_OPERATORS and _is_object_array(actual):
        if sub is not None:
            return _evaluate_sub_conditions(actual, sub)
        if actual and all(is_file(item) for item in actual):
            raise _value_error(f"Variable {selector}: sub_variable_condition is required for files")
    if operator in _EXISTENCE:
        return _evaluate(operator, actual, None)
    expected = _prepare_expected(actual, condition.get("value"), lookup)
    return _evaluate(operator, actual, expected)


def _is_object_array(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, Mapping) for item in value)


def _evaluate(operator: str, actual: Any, expected: Any) -> bool:
    evaluator = _EVALUATORS[operator]
    if operator in _UNARY:
        return evaluator(actual)
    return evaluator(actual, expected)


# --- expected value ------------------------------------------------------------------


def render_condition_value(text: str, lookup: Lookup) -> str:
    """Render `{{#...#}}` in a condition value; a missing variable stays as `node.var` text.

    That is what Dify's template conversion does for condition and filter values, where
    `fanflow.variables.render` would give empty text.
    """

    def lenient(selector: Sequence[str]) -> Any:
        try:
            return lookup(selector)
        except KeyError:
            return ".".join(selector)

    return render(text, lenient)


def _prepare_expected(actual: Any, raw: Any, lookup: Lookup) -> Any:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        raw = str(raw)  # Dify's DSL stores numbers as text
    expected = render_condition_value(raw, lookup) if isinstance(raw, str) else raw
    if expected is None:
        return None
    if _is_boolean_value(actual):
        if isinstance(expected, list):
            return [_to_bool(item) for item in expected]
        return _to_bool(expected)
    if isinstance(expected, str | bool):
        return expected
    if isinstance(expected, list) and (
        all(isinstance(item, str) for item in expected)
        or all(isinstance(item, bool) for item in expected)
    ):
        return list(expected)
    raise _type_error(f"unexpected expected value: {expected!r}")


def _is_boolean_value(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, bool) for v in value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, int):  # bool included
        return bool(value)
    if isinstance(value, str):
        try:
            loaded = json.loads(value)
        except json.JSONDecodeError as exc:
            raise _value_error(
                f"expected value for a boolean variable must be true, false or a number, got {value!r}"
            ) from exc
        if isinstance(loaded, int):
            return bool(loaded)
    raise _type_error(f"unexpected value for a boolean variable: {value!r}")


# --- operators -----------------------------------------------------------------------


def _contains(actual: Any, expected: Any) -> bool:
    if not actual:
        return False
    if isinstance(actual, str):
        return (expected if isinstance(expected, str) else str(expected)) in actual
    if isinstance(actual, list):
        return expected in actual
    raise _value_error(f"'contains' needs a string or an array, got {_kind(actual)}")


def _not_contains(actual: Any, expected: Any) -> bool:
    if not actual:
        return True
    return not _contains(actual, expected)


def _affix(method: str) -> Callable[[Any, Any], bool]:
    def check(actual: Any, expected: Any) -> bool:
        if not actual:
            return False
        if not isinstance(actual, str):
            raise _type_error(f"'{method}' needs a string variable, got {_kind(actual)}")
        if not isinstance(expected, str):
            raise _type_error(f"'{method}' needs a string value, got {_kind(expected)}")
        return actual.startswith(expected) if method == "start with" else actual.endswith(expected)

    return check


def _is(actual: Any, expected: Any) -> bool:
    if actual is None:
        return False
    if isinstance(actual, str | bool):
        same: bool = actual == expected
        return same
    raise _value_error(f"'is' needs a string or boolean variable, got {_kind(actual)}")


def _is_not(actual: Any, expected: Any) -> bool:
    if actual is None:
        return False
    return not _is(actual, expected)


def _equality_operand(actual: Any, expected: Any) -> Any:
    if isinstance(actual, bool):
        converter: Callable[[Any], Any] = bool
    elif isinstance(actual, int):
        converter = int
    elif isinstance(actual, float):
        converter = float
    else:
        raise _value_error(f"'=' and '≠' need a number or boolean variable, got {_kind(actual)}")
    if not isinstance(expected, int | float | str):
        raise _value_error(f"cannot compare a number with {_kind(expected)}")
    try:
        return converter(expected)
    except ValueError as exc:
        raise _value_error(f"cannot convert {expected!r} to {converter.__name__}") from exc


def _equal(actual: Any, expected: Any) -> bool:
    if actual is None:
        return False
    return bool(actual == _equality_operand(actual, expected))


def _not_equal(actual: Any, expected: Any) -> bool:
    if actual is None:
        return False
    return bool(actual != _equality_operand(actual, expected))


def _numeric_operands(actual: Any, expected: Any) -> tuple[int | float, int | float]:
    if not isinstance(actual, int | float):
        raise _value_error(f"numeric comparison needs a number variable, got {_kind(actual)}")
    if isinstance(expected, str):
        try:
            number = float(expected)
        except ValueError as exc:
            raise _value_error(f"Cannot convert {expected!r} to number") from exc
        if isinstance(actual, int) and number.is_integer():
            return actual, int(number)
        if isinstance(actual, int):
            return float(actual), number
        return actual, number
    if isinstance(expected, float):
        return (float(actual) if isinstance(actual, int) else actual), expected
    if isinstance(expected, int):
        return actual, expected
    raise _value_error(f"Cannot convert {_kind(expected)} to number")


def _ordering(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def check(actual: Any, expected: Any) -> bool:
        if actual is None:
            return False
        left, right = _numeric_operands(actual, expected)
        return compare(left, right)

    return check


def _in(actual: Any, expected: Any) -> bool:
    if not actual:
        return False
    if not isinstance(expected, list):
        raise _value_error(f"'in' needs an array value, got {_kind(expected)}")
    return actual in expected


def _not_in(actual: Any, expected: Any) -> bool:
    if not actual:
        return True
    return not _in(actual, expected)


def _all_of(actual: Any, expected: Any) -> bool:
    if not isinstance(expected, list) or not (
        all(isinstance(item, str) for item in expected)
        or all(isinstance(item, bool) for item in expected)
    ):
        raise _value_error("'all of' needs a list of strings or of booleans as value")
    if not actual:
        return False
    strings = all(isinstance(item, str) for item in expected)
    if isinstance(actual, list | tuple | set) or (strings and isinstance(actual, str)):
        return all(item in actual for item in expected)
    return False


_EVALUATORS: Mapping[str, Callable[..., bool]] = {
    "contains": _contains,
    "not contains": _not_contains,
    "start with": _affix("start with"),
    "end with": _affix("end with"),
    "is": _is,
    "is not": _is_not,
    "empty": lambda actual: not actual,
    "not empty": lambda actual: bool(actual),
    "in": _in,
    "not in": _not_in,
    "all of": _all_of,
    "=": _equal,
    "≠": _not_equal,
    ">": _ordering(lambda a, b: a > b),
    "<": _ordering(lambda a, b: a < b),
    "≥": _ordering(lambda a, b: a >= b),
    "≤": _ordering(lambda a, b: a <= b),
    "null": lambda actual: actual is None,
    "not null": lambda actual: actual is not None,
    "exists": lambda actual: actual is not None,
    "not exists": lambda actual: actual is None,
}


# --- arrays of files / objects -------------------------------------------------------


def _evaluate_sub_conditions(items: list[Any], sub: Mapping[str, Any]) -> bool:
    """Each sub-condition holds for any element (all elements for a negated operator)."""
    operator = sub.get("logical_operator") or "and"
    results: list[bool] = []
    for condition in sub.get("conditions") or []:
        key = str(condition.get("key") or "")
        comparison = condition.get("comparison_operator")
        if comparison not in _EVALUATORS:
            raise _value_error(f"Unsupported comparison_operator: {comparison!r}")
        if items and all(is_file(item) for item in items) and key not in FILE_ATTRIBUTES:
            raise _value_error(f"'{key}' is not a file attribute")
        values = [item_attribute(item, key) for item in items]
        expected = condition.get("value")
        if key == "extension":
            if not isinstance(expected, str):
                raise _type_error("the value of an 'extension' sub-condition must be a string")
            expected = _dotted(expected)
            values = [_dotted(v) if isinstance(v, str) else v for v in values]
        checks = [_evaluate(comparison, value, expected) for value in values]
        results.append(all(checks) if "not" in comparison else any(checks))
    return all(results) if operator == "and" else any(results)


def _dotted(extension: str) -> str:
    return extension if not extension or extension.startswith(".") else "." + extension


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__
