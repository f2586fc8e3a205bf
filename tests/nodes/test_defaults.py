"""Typed default values of `error_strategy: default-value`."""

from __future__ import annotations

from typing import Any

import pytest

from fanflow.nodes import coerce_default


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("string", "text", "text"),
        ("string", "", ""),
        ("string", "[1]", "[1]"),
        ("number", "5", 5.0),  # Dify: float() of the text
        ("number", "-2.5", -2.5),
        ("number", 3, 3),
        ("number", 1.5, 1.5),
        ("object", '{"a": 1}', {"a": 1}),
        ("object", {"a": 1}, {"a": 1}),
        ("array[number]", "[1, 2.5]", [1, 2.5]),
        ("array[number]", [1], [1]),
        ("array[string]", '["a"]', ["a"]),
        ("array[string]", "[]", []),
        ("array[object]", '[{"a": 1}]', [{"a": 1}]),
        ("array[file]", "anything", "anything"),
        ("array[file]", None, None),
    ],
)
def test_coerce(kind: str, value: Any, expected: Any) -> None:
    result = coerce_default(kind, value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("number", "abc", "default value of type number is not a number: 'abc'"),
        ("number", [1], "must be a number"),
        ("number", None, "must be a number"),
        ("object", "{bad", "default value of type object is not valid JSON"),
        ("object", "[1]", "must be an object"),
        ("array[number]", '["a"]', r"array\[number\] must be a list of that type"),
        ("array[string]", "[1]", "must be a list of that type"),
        ("array[object]", "{}", "must be a list of that type"),
        ("array[string]", "nope", "not valid JSON"),
        ("string", 5, "must be text"),
        ("boolean", "true", "default value type must be one of"),
    ],
)
def test_refused(kind: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        coerce_default(kind, value)
