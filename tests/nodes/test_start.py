"""Start inputs, prepared as Dify's BaseAppGenerator._validate_inputs does."""

from __future__ import annotations

from typing import Any

import pytest

from fanflow.errors import InputsInvalid
from fanflow.nodes import prepare_inputs


def var(name: str = "x", kind: str = "text-input", **extra: Any) -> dict[str, Any]:
    return {"variable": name, "label": name, "type": kind, "required": False, **extra}


def prepared(variable: dict[str, Any], value: Any = ...) -> Any:
    inputs = {} if value is ... else {variable["variable"]: value}
    return prepare_inputs([variable], inputs)[variable["variable"]]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        # text-like
        (var(), "hi", "hi"),
        (var(), "", ""),  # an empty string is a value, not "missing"
        (var(required=True), "", ""),
        (var(), ..., None),
        (var(), None, None),
        (var(default="d"), ..., "d"),
        (var(default="d"), None, "d"),
        (var(default="d"), "", ""),
        (var(), "a\x00b", "ab"),
        (var(max_length=3), "abc", "abc"),
        (var(kind="paragraph", max_length=0), "long text", "long text"),
        (var(kind="select", options=["a", "b"]), "b", "b"),
        (var(kind="select", options=["a"], default="a"), ..., "a"),
        # number
        (var(kind="number"), 3, 3),
        (var(kind="number"), 2.5, 2.5),
        (var(kind="number"), "42", 42),
        (var(kind="number"), " 42 ", 42),
        (var(kind="number"), "4.0", 4.0),
        (var(kind="number"), "-1.5", -1.5),
        (var(kind="number"), "", None),
        (var(kind="number", required=True), "  ", None),  # blank number: null, even required
        (var(kind="number", default="7"), ..., 7),  # a default is validated like a value
        (var(kind="number"), True, True),  # Dify lets a boolean through
        # checkbox
        (var(kind="checkbox"), True, True),
        (var(kind="checkbox"), "TRUE", True),
        (var(kind="checkbox"), " yes ", True),
        (var(kind="checkbox"), "on", True),
        (var(kind="checkbox"), "1", True),
        (var(kind="checkbox"), "false", False),
        (var(kind="checkbox"), "No", False),
        (var(kind="checkbox"), "off", False),
        (var(kind="checkbox"), "0", False),
        (var(kind="checkbox"), 1, True),
        (var(kind="checkbox"), 0.0, False),
        (var(kind="checkbox"), "maybe", "maybe"),  # other words are kept, as Dify does
        (var(kind="checkbox"), 5, 5),
        (var(kind="checkbox", default=False), ..., False),
        # json_object
        (var(kind="json_object"), {"a": 1}, {"a": 1}),
        (var(kind="json_object"), {}, {}),
        (var(kind="json_object"), "", ""),
        # files
        (
            var(kind="file"),
            {"transfer_method": "remote_url", "url": "u"},
            {"transfer_method": "remote_url", "url": "u"},
        ),
        (var(kind="file"), "", None),
        (var(kind="file-list"), "", None),
        (var(kind="file-list"), [], []),
        (var(kind="file-list"), [{"a": 1}], [{"a": 1}]),
        (var(kind="file-list", max_length=2), [{}, {}], [{}, {}]),
    ],
)
def test_accepted(variable: dict[str, Any], value: Any, expected: Any) -> None:
    result = prepared(variable, value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (var(required=True), ..., "x is required in input form"),
        (var(required=True), None, "x is required in input form"),
        (var(kind="number", required=True), None, "x is required in input form"),
        (var(kind="file", required=True), None, "x is required in input form"),
        (var(), 5, r"\(type 'text-input'\) x in input form must be a string, got int"),
        (var(kind="paragraph"), ["a"], r"\(type 'paragraph'\) x in input form must be a string"),
        (
            var(kind="select", options=["a"]),
            1,
            r"\(type 'select'\) x in input form must be a string",
        ),
        (
            var(kind="select", options=["a", "b"]),
            "c",
            r"x in input form must be one of the following: \['a', 'b'\]",
        ),
        (var(kind="select"), "a", "must be one of the following: \\[\\]"),
        (var(max_length=3), "abcd", "x in input form must be less than 3 characters"),
        (var(default="toolong", max_length=3), ..., "must be less than 3 characters"),
        (var(kind="number"), "abc", "x in input form must be a valid number"),
        (var(kind="number"), "1e5", "x in input form must be a valid number"),
        (var(kind="number"), [1], "x in input form must be a number, got list"),
        (var(kind="number"), {"a": 1}, "x in input form must be a number, got dict"),
        (var(kind="json_object"), '{"a": 1}', "x in input form must be a dict"),
        (var(kind="json_object"), [1], "x in input form must be a dict"),
        (var(kind="json_object"), [], "x in input form must be a dict"),
        (var(kind="json_object"), 0, "x in input form must be a dict"),
        (var(kind="json_object"), False, "x in input form must be a dict"),
        (var(kind="file", required=True), "", "x in input form must be a file"),
        (var(kind="file"), "http://x", "x in input form must be a file"),
        (var(kind="file-list"), [{}, "x"], "x in input form must be a list of files"),
        (var(kind="file-list"), {"a": 1}, "x in input form must be a list of files"),
        (
            var(kind="file-list", max_length=1),
            [{}, {}],
            "x in input form must be less than 1 files",
        ),
        (var(kind="checkbox"), {"a": 1}, r"Invalid input type for \['x'\]"),
        (var(kind="checkbox"), [{"a": 1}], r"Invalid input type for \['x'\]"),
        (var(kind="external_data_tool"), "v", "unsupported input type 'external_data_tool'"),
    ],
)
def test_refused(variable: dict[str, Any], value: Any, message: str) -> None:
    with pytest.raises(InputsInvalid, match=message) as info:
        prepared(variable, value)
    assert info.value.variable == "x"


def test_every_declared_variable_gets_a_value_and_extras_are_dropped() -> None:
    variables = [var("a"), var("b", "number", default=2), var("c", "checkbox")]
    assert prepare_inputs(variables, {"a": "x", "extra": 1}) == {"a": "x", "b": 2, "c": None}


def test_no_variables_and_no_inputs() -> None:
    assert prepare_inputs([], {"a": 1}) == {}
    assert prepare_inputs([var("a")], {}) == {"a": None}


def test_missing_type_reads_as_text_input() -> None:
    assert prepare_inputs([{"variable": "a"}], {"a": "x"}) == {"a": "x"}
    with pytest.raises(InputsInvalid, match="must be a string"):
        prepare_inputs([{"variable": "a"}], {"a": 1})


def test_first_problem_is_reported() -> None:
    variables = [var("a", required=True), var("b", required=True)]
    with pytest.raises(InputsInvalid, match="a is required") as info:
        prepare_inputs(variables, {})
    assert info.value.variable == "a"
