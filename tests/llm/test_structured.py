"""Reading JSON out of replies and checking it against a schema."""

from __future__ import annotations

import pytest

from fanflow.llm.structured import find_object, parse_object, schema_error


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('Sure! Here it is: {"a": {"b": [1, 2]}} — done', {"a": {"b": [1, 2]}}),
        ('[{"a": 1}]', {"a": 1}),
        ('{not json} then {"a": 2}', {"a": 2}),
        ("no json here", None),
        ("[1, 2]", None),
    ],
)
def test_find_object(text: str, expected: dict | None) -> None:
    assert find_object(text) == expected


def test_parse_object() -> None:
    assert parse_object('{"x": true}') == {"x": True}
    assert parse_object('```\n{"x": 1}\n```') == {"x": 1}
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_object('{"truncated": ')
    with pytest.raises(ValueError, match="not an object"):
        parse_object("[1]")


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "kind": {"enum": ["a", "b"]},
        "maybe": {"type": ["string", "null"]},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"name": "x", "age": 3, "tags": ["t"], "kind": "a", "maybe": None}, None),
        ({"name": "x", "age": 3.0}, None),
        ({"name": "x"}, "$: required property 'age' is missing"),
        ({"name": "x", "age": "3"}, "$.age: expected integer, got string"),
        ({"name": "x", "age": True}, "$.age: expected integer, got boolean"),
        ({"name": "x", "age": 1, "tags": ["a", 2]}, "$.tags[1]: expected string, got integer"),
        ({"name": "x", "age": 1, "kind": "c"}, "$.kind: 'c' is not one of ['a', 'b']"),
        ({"name": "x", "age": 1, "extra": 1}, "$: unexpected property 'extra'"),
        ([], "$: expected object, got array"),
    ],
)
def test_schema_error(value: object, error: str | None) -> None:
    assert schema_error(value, SCHEMA) == error
