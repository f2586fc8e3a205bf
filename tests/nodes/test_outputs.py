"""Code node output checks, after Dify's code node result transformation."""

from __future__ import annotations

from typing import Any

import pytest

from fanflow.errors import NodeError
from fanflow.nodes import CodeLimits, check_code_outputs


def check(outputs: Any, declared: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return check_code_outputs(outputs, declared, node_label="code1 (Code)", **kw)


def one(kind: str, value: Any, **spec: Any) -> Any:
    return check({"r": value}, {"r": {"type": kind, **spec}})["r"]


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("string", "text", "text"),
        ("string", "a\x00b", "ab"),
        ("string", None, None),
        ("string", "", ""),
        ("number", 3, 3),
        ("number", -2.5, -2.5),
        ("number", True, 1),  # booleans become 0/1
        ("number", None, None),
        ("number", 0.1 + 0.2, 0.1 + 0.2),
        ("boolean", True, True),
        ("boolean", None, None),
        ("boolean", "yes", "yes"),  # Dify does not check boolean outputs
        ("object", {"a": {"b": 1}}, {"a": {"b": 1}}),
        ("object", {}, {}),
        ("object", None, None),
        ("array[string]", ["a", None, "b\x00"], ["a", None, "b"]),
        ("array[string]", [], []),
        ("array[string]", None, None),
        ("array[number]", [1, 2.5, True], [1, 2.5, 1]),
        ("array[number]", None, None),
        ("array[object]", [{"a": 1}, None], [{"a": 1}, None]),
        ("array[boolean]", [True, None, False], [True, None, False]),
        ("array[boolean]", [True] * 100, [True] * 100),  # no length limit
    ],
)
def test_accepted(kind: str, value: Any, expected: Any) -> None:
    result = one(kind, value)
    assert result == expected
    if expected is not None and not isinstance(expected, list | dict):
        assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("string", 5, "Output 'r' must be a string, got int"),
        ("string", ["a"], "Output 'r' must be a string, got list"),
        ("number", "5", "Output 'r' must be a number, got str"),
        ("number", [1], "Output 'r' must be a number, got list"),
        ("object", [1], "Output 'r' must be an object, got list"),
        ("object", "{}", "Output 'r' must be an object, got str"),
        ("array[string]", "a", "Output 'r' must be an array, got str"),
        ("array[string]", ["a", 1], r"Output 'r\[1\]' must be a string, got int"),
        ("array[number]", [1, None], r"Output 'r\[1\]' must be a number, got null"),
        ("array[number]", [1, "2"], r"Output 'r\[1\]' must be a number, got str"),
        ("array[object]", [{}, "x"], r"Output 'r\[1\]' must be an object, got str"),
        ("array[boolean]", [True, 1], r"Output 'r\[1\]' must be a boolean, got int"),
        ("array[boolean]", {}, "Output 'r' must be an array, got dict"),
        ("array[file]", [], r"unsupported type 'array\[file\]'"),
        ("integer", 1, "unsupported type 'integer'"),
    ],
)
def test_type_errors(kind: str, value: Any, message: str) -> None:
    with pytest.raises(NodeError, match=message) as info:
        one(kind, value)
    assert info.value.error_type == "OutputValidationError"
    assert str(info.value).startswith("code1 (Code): ")


def test_result_must_be_a_dict() -> None:
    with pytest.raises(NodeError, match="the code must return a dict, got list"):
        check([1], {"r": {"type": "string"}})


def test_missing_output() -> None:
    with pytest.raises(NodeError, match="Output 'b' is missing") as info:
        check({"a": "x"}, {"a": {"type": "string"}, "b": {"type": "number"}})
    assert info.value.error_type == "OutputValidationError"


def test_undeclared_output() -> None:
    with pytest.raises(NodeError, match="undeclared output\\(s\\): 'extra'") as info:
        check({"a": "x", "extra": 1}, {"a": {"type": "string"}})
    assert info.value.error_type == "CodeNodeError"


def test_no_declared_outputs() -> None:
    assert check({}, {}) == {}
    with pytest.raises(NodeError, match="undeclared"):
        check({"a": 1}, {})


def test_children_schema() -> None:
    declared = {
        "o": {
            "type": "object",
            "children": {"name": {"type": "string"}, "tags": {"type": "array[string]"}},
        }
    }
    assert check({"o": {"name": "n\x00", "tags": ["t"]}}, declared) == {
        "o": {"name": "n", "tags": ["t"]}
    }
    with pytest.raises(NodeError, match=r"Output 'o.name' must be a string, got int"):
        check({"o": {"name": 1, "tags": []}}, declared)
    with pytest.raises(NodeError, match=r"Output 'o.tags' is missing"):
        check({"o": {"name": "n"}}, declared)
    with pytest.raises(NodeError, match="undeclared output\\(s\\) in 'o': 'x'"):
        check({"o": {"name": "n", "tags": [], "x": 1}}, declared)


def test_array_of_objects_with_children() -> None:
    declared = {"rows": {"type": "array[object]", "children": {"id": {"type": "number"}}}}
    assert check({"rows": [{"id": True}, None]}, declared) == {"rows": [{"id": 1}, None]}
    with pytest.raises(NodeError, match=r"Output 'rows\[1\].id' must be a number, got str"):
        check({"rows": [{"id": 1}, {"id": "2"}]}, declared)


def test_untyped_object_contents_are_checked_for_limits_only() -> None:
    limits = CodeLimits(max_string_length=3)
    kept = {"s": "a\x00", "n": 1.5, "l": [None, 5, "x"], "b": True, "o": {"z": None}}
    assert check({"o": kept}, {"o": {"type": "object"}}, limits=limits) == {"o": kept}
    with pytest.raises(NodeError, match=r"Output 'o.s' is 4 characters long; it must be at most 3"):
        check({"o": {"s": "abcd"}}, {"o": {"type": "object"}}, limits=limits)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"l": [1, "a"]}, "Output 'o.l' mixes element types"),
        ({"l": [[1], [2]]}, r"Output 'o.l\[0\]' is an array inside an array"),
        ({"n": 10**19}, "Output 'o.n' is out of range"),
        ({"l": [1, 10**19]}, r"Output 'o.l\[1\]' is out of range"),
        ({"l": [{"s": "x" * 5}]}, r"Output 'o.l\[0\].s' is 5 characters long"),
        ({"f": 1e-25}, "Output 'o.f' has 25 decimal digits; at most 20 are allowed"),
    ],
)
def test_untyped_errors(value: dict[str, Any], message: str) -> None:
    with pytest.raises(NodeError, match=message):
        check({"o": value}, {"o": {"type": "object"}}, limits=CodeLimits(max_string_length=4))


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (9_223_372_036_854_775_807, True),
        (9_223_372_036_854_775_808, False),
        (-9_223_372_036_854_775_807, True),
        (-9_223_372_036_854_775_808, False),
        (float("inf"), False),
        (1.12345678901234567, True),
        (1e-20, True),
        (1e-21, False),
        (123456789.5, True),
    ],
)
def test_number_limits(value: float, ok: bool) -> None:
    if ok:
        assert one("number", value) == value
    else:
        with pytest.raises(NodeError, match=r"out of range|decimal digits"):
            one("number", value)


def test_typed_number_arrays_are_not_range_checked() -> None:
    assert one("array[number]", [10**30]) == [10**30]  # as in Dify


@pytest.mark.parametrize(
    ("kind", "length", "limit_name"),
    [
        ("array[string]", 31, "max_string_array_length"),
        ("array[object]", 31, "max_object_array_length"),
        ("array[number]", 1001, "max_number_array_length"),
    ],
)
def test_array_lengths(kind: str, length: int, limit_name: str) -> None:
    item = {"array[string]": "s", "array[object]": {}, "array[number]": 1}[kind]
    assert len(one(kind, [item] * (length - 1))) == length - 1
    with pytest.raises(
        NodeError, match=f"has {length} elements; it must have at most {length - 1}"
    ):
        one(kind, [item] * length)
    assert getattr(CodeLimits(), limit_name) == length - 1


def test_string_length_limit() -> None:
    assert len(one("string", "a" * 400_000)) == 400_000
    with pytest.raises(NodeError, match="is 400001 characters long; it must be at most 400000"):
        one("string", "a" * 400_001)
    with pytest.raises(NodeError, match=r"Output 'r\[0\]' is 400001 characters long"):
        one("array[string]", ["a" * 400_001])


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"k": value}
    return value


def test_depth_limit() -> None:
    # the result itself is depth 1; an object output is depth 2, and so on up to 5
    assert check({"o": nested(3)}, {"o": {"type": "object"}})
    with pytest.raises(NodeError, match="Depth limit 5 reached") as info:
        check({"o": nested(4)}, {"o": {"type": "object"}})
    assert info.value.error_type == "DepthLimitError"
    # elements of an object array sit at the same depth as an object output
    assert check({"rows": [nested(3)]}, {"rows": {"type": "array[object]"}})
    with pytest.raises(NodeError, match="Depth limit 5 reached"):
        check({"rows": [nested(4)]}, {"rows": {"type": "array[object]"}})
