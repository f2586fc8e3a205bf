"""Variable assigner v1/v2 write plans ("oracle": confirmed with graphon 0.8.0)."""

from __future__ import annotations

from typing import Any

import pytest

from fanflow.errors import NodeError
from fanflow.nodes import plan_assignments
from fanflow.nodes.assigner import infer_type

from .conftest import make_lookup

CONVERSATION = {
    "s": ("string", "ab"),
    "n": ("number", 10),
    "f": ("number", 1.5),
    "arr": ("array[string]", ["a"]),
    "nums": ("array[number]", [1, 2]),
    "objs": ("array[object]", [{"k": 1}]),
    "flags": ("array[boolean]", [True]),
    "files": ("array[file]", []),
    "o": ("object", {"k": 1}),
    "b": ("boolean", False),
}
TYPES = {("conversation", name): t for name, (t, _) in CONVERSATION.items()}


def values(**extra: Any) -> dict[str, Any]:
    base = {f"conversation.{name}": value for name, (_, value) in CONVERSATION.items()}
    return {**base, **extra}


def item(target: str, operation: str, value: Any = None, input_type: str = "constant") -> dict:
    return {
        "variable_selector": ["conversation", target],
        "operation": operation,
        "input_type": input_type,
        "value": value,
    }


def v2(*items: dict, typed: bool = True, **extra: Any) -> dict[str, Any]:
    writes = plan_assignments(
        {"version": "2", "items": list(items)},
        make_lookup(values(**extra)),
        version=2,
        types=TYPES if typed else None,
    )
    return {".".join(selector): value for selector, value in writes}


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([item("s", "over-write", "xy")], {"conversation.s": "xy"}),
        ([item("s", "set", "xy")], {"conversation.s": "xy"}),
        ([item("n", "set", 3)], {"conversation.n": 3}),
        ([item("n", "+=", 5)], {"conversation.n": 15}),
        ([item("n", "-=", 2.5)], {"conversation.n": 7.5}),
        ([item("n", "*=", 3)], {"conversation.n": 30}),
        ([item("n", "/=", 4)], {"conversation.n": 2.5}),  # oracle
        ([item("n", "/=", 5)], {"conversation.n": 2.0}),
        ([item("n", "+=", True)], {"conversation.n": 11}),  # oracle: a boolean is a number
        ([item("f", "+=", 1)], {"conversation.f": 2.5}),
        ([item("b", "set", True)], {"conversation.b": True}),  # oracle
        ([item("o", "set", {"z": 2})], {"conversation.o": {"z": 2}}),
        ([item("o", "set", '{"z": 2}')], {"conversation.o": {"z": 2}}),  # oracle: JSON text
        ([item("o", "over-write", {"z": 2})], {"conversation.o": {"z": 2}}),
        ([item("arr", "append", ["x", "v"], "variable")], {"conversation.arr": ["a", "q"]}),
        (
            [item("arr", "extend", ["x", "l"], "variable")],
            {"conversation.arr": ["a", "b", "c"]},
        ),  # oracle
        ([item("arr", "over-write", ["x", "l"], "variable")], {"conversation.arr": ["b", "c"]}),
        ([item("nums", "append", ["x", "num"], "variable")], {"conversation.nums": [1, 2, 7]}),
        (
            [item("objs", "append", ["x", "obj"], "variable")],
            {"conversation.objs": [{"k": 1}, {"m": 2}]},
        ),
        (
            [item("flags", "extend", ["x", "flags"], "variable")],
            {"conversation.flags": [True, False]},
        ),
        ([item("arr", "remove-first", None, "variable")], {"conversation.arr": []}),
        ([item("nums", "remove-last", None, "variable")], {"conversation.nums": [1]}),
        ([item("nums", "remove-first", None, "variable")], {"conversation.nums": [2]}),
        ([item("s", "over-write", ["x", "v"], "variable")], {"conversation.s": "q"}),
        ([item("n", "over-write", ["x", "obj", "m"], "variable")], {"conversation.n": 2}),
    ],
)
def test_v2_operations(items: list[dict], expected: dict[str, Any]) -> None:
    extra = {"x.v": "q", "x.l": ["b", "c"], "x.num": 7, "x.obj": {"m": 2}, "x.flags": [False]}
    assert v2(*items, **extra) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [("s", ""), ("n", 0), ("f", 0.0), ("arr", []), ("objs", []), ("o", {}), ("b", False)],
)
def test_v2_clear(target: str, expected: Any) -> None:  # oracle
    out = v2(item(target, "clear", None, "variable"))
    assert out == {f"conversation.{target}": expected}
    assert type(out[f"conversation.{target}"]) is type(expected)


def test_v2_clear_keeps_the_starting_type() -> None:  # oracle: an integer stays an integer
    out = v2(item("n", "+=", 0.5), item("n", "clear", None, "variable"))
    assert out == {"conversation.n": 0}
    assert type(out["conversation.n"]) is int


def test_v2_later_items_see_earlier_writes() -> None:  # oracle
    out = v2(item("n", "+=", 5), item("n", "*=", 2))
    assert out == {"conversation.n": 30}
    out = v2(
        item("arr", "remove-first", None, "variable"), item("arr", "remove-first", None, "variable")
    )
    assert out == {"conversation.arr": []}


def test_v2_one_write_per_target_in_first_write_order() -> None:
    lookup = make_lookup(values())
    writes = plan_assignments(
        {
            "items": [
                item("n", "+=", 1),
                item("s", "set", "z"),
                item("n", "+=", 1),
            ]
        },
        lookup,
        version=2,
        types=TYPES,
    )
    assert writes == [(("conversation", "n"), 12), (("conversation", "s"), "z")]


def test_v2_variable_input_reads_pending_writes() -> None:
    out = v2(item("s", "set", "new"), item("arr", "append", ["conversation", "s"], "variable"))
    assert out == {"conversation.s": "new", "conversation.arr": ["a", "new"]}


def test_v2_null_input_variable_skips_the_item() -> None:  # oracle
    assert v2(item("s", "over-write", ["x", "v"], "variable"), **{"x.v": None}) == {}


def test_v2_remove_on_empty_array_keeps_it() -> None:
    assert v2(item("files", "remove-last", None, "variable")) == {"conversation.files": []}


def test_v2_does_not_mutate_current_values() -> None:
    current = {"conversation.arr": ["a"], "x.v": "b"}
    writes = plan_assignments(
        {"items": [item("arr", "append", ["x", "v"], "variable")]},
        make_lookup(current),
        version=2,
    )
    assert current["conversation.arr"] == ["a"]
    assert writes == [(("conversation", "arr"), ["a", "b"])]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([item("s", "+=", 1)], r"Operation \+= is not supported for type string"),  # oracle
        ([item("arr", "+=", 1)], r"Operation \+= is not supported for type array\[string\]"),
        ([item("n", "append", 1)], "Operation append is not supported for type integer"),
        ([item("f", "extend", [1])], "Operation extend is not supported for type float"),
        ([item("arr", "set", ["x"])], r"Operation set is not supported for type array\[string\]"),
        ([item("n", "/=", 0)], "Invalid input value 0"),  # oracle
        ([item("n", "over-write", "5")], "Invalid input value '5'"),  # oracle
        ([item("b", "over-write", "true")], "Invalid input value 'true'"),
        ([item("o", "set", "[1]")], r"Invalid input value \[1\]"),
        ([item("o", "set", "{bad")], "not a JSON object"),
        (
            [item("s", "clear")],
            "Input type constant is not supported for operation clear",
        ),  # oracle
        (
            [item("arr", "over-write", ["x"])],
            "Input type constant is not supported for operation over-write",
        ),  # oracle
        (
            [item("n", "+=", ["x", "num"], "variable")],
            r"Input type variable is not supported for operation \+=",
        ),
        (
            [item("n", "set", ["x", "num"], "variable")],
            "Input type variable is not supported for operation set",
        ),
        ([item("arr", "append", ["x", "num"], "variable")], "Invalid input value 7"),  # oracle
        ([item("arr", "extend", ["x", "v"], "variable")], "Invalid input value 'q'"),
        ([item("nums", "extend", ["x", "l"], "variable")], "Invalid input value"),
        ([item("files", "clear", None, "variable")], r"unsupported variable type: array\[file\]"),
        ([item("files", "over-write", ["x", "l"], "variable")], "Invalid input value"),
        (
            [item("s", "over-write", ["x", "gone"], "variable")],
            r"Variable \['x', 'gone'\] not found",
        ),  # oracle
        ([item("s", "over-write", "x.v", "variable")], "value must be a variable selector"),
        ([item("nope", "set", "v")], r"Variable \['conversation', 'nope'\] not found"),
        ([{**item("s", "set", "v"), "variable_selector": ["conversation", "o", "k"]}], "not found"),
        ([item("s", "concat", "v")], "operation 'concat' is not supported"),
    ],
)
def test_v2_errors(items: list[dict], message: str) -> None:
    with pytest.raises(NodeError, match=message) as info:
        v2(*items, **{"x.v": "q", "x.l": ["b", "c"], "x.num": 7})
    assert info.value.error_type == "VariableOperatorNodeError"
    assert "(variable conversation." in str(info.value)


def test_v2_error_after_valid_items_fails_the_whole_node() -> None:
    with pytest.raises(NodeError, match="not supported"):
        v2(item("n", "+=", 1), item("s", "+=", 1))


def test_untyped_targets_are_typed_from_their_value() -> None:
    lookup = make_lookup({"loop.count": 2, "loop.items": ["a"], "loop.name": "x"})
    data = {
        "items": [
            {
                "variable_selector": ["loop", "count"],
                "operation": "+=",
                "input_type": "constant",
                "value": 1,
            },
            {
                "variable_selector": ["loop", "items"],
                "operation": "append",
                "input_type": "variable",
                "value": ["loop", "name"],
            },
        ]
    }
    writes = plan_assignments(data, lookup, version=2)
    assert writes == [(("loop", "count"), 3), (("loop", "items"), ["a", "x"])]
    with pytest.raises(NodeError, match="not supported for type string"):
        plan_assignments(
            {"items": [{**data["items"][0], "variable_selector": ["loop", "name"]}]},
            lookup,
            version=2,
        )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "none"),
        (True, "boolean"),
        (3, "integer"),
        (3.5, "float"),
        ("x", "string"),
        ({"a": 1}, "object"),
        ({"dify_model_identity": "__dify__file__"}, "file"),
        ([], "array[any]"),
        (["a"], "array[string]"),
        ([1, 2.5], "array[number]"),
        ([True], "array[boolean]"),
        ([{"a": 1}], "array[object]"),
        ([{"dify_model_identity": "__dify__file__"}], "array[file]"),
        ([1, "a"], "array[any]"),
        ([[1]], "array[any]"),
    ],
)
def test_infer_type(value: Any, expected: str) -> None:
    assert infer_type(value) == expected


# --- v1 ------------------------------------------------------------------------------


def v1(mode: str, target: str, source: list[str], **extra: Any) -> dict[str, Any]:
    data = {
        "assigned_variable_selector": ["conversation", target],
        "write_mode": mode,
        "input_variable_selector": source,
    }
    writes = plan_assignments(data, make_lookup(values(**extra)), version=1, types=TYPES)
    return {".".join(selector): value for selector, value in writes}


@pytest.mark.parametrize(
    ("mode", "target", "source", "expected"),
    [
        ("over-write", "s", ["x", "v"], "q"),
        ("over-write", "n", ["x", "v"], "q"),  # oracle: v1 does not check types
        ("over-write", "n", ["x", "none"], None),  # oracle
        ("append", "arr", ["x", "v"], ["a", "q"]),
        ("append", "nums", ["x", "v"], [1, 2, "q"]),
        ("clear", "f", [], 0.0),  # oracle
        ("clear", "arr", [], []),
        ("clear", "s", [], ""),
    ],
)
def test_v1(mode: str, target: str, source: list[str], expected: Any) -> None:
    out = v1(mode, target, source, **{"x.v": "q", "x.none": None})
    assert out == {f"conversation.{target}": expected}


@pytest.mark.parametrize(
    ("mode", "target", "source", "message"),
    [
        ("append", "s", ["x", "v"], "append mode requires an array variable"),  # oracle
        ("over-write", "s", ["x", "gone"], "input value not found"),
        ("append", "arr", [], "input value not found"),
        ("over-write", "gone", ["x", "v"], "assigned variable not found"),
        ("replace", "s", ["x", "v"], "write_mode must be over-write, append or clear"),
        ("clear", "files", [], r"unsupported variable type: array\[file\]"),
    ],
)
def test_v1_errors(mode: str, target: str, source: list[str], message: str) -> None:
    with pytest.raises(NodeError, match=message):
        v1(mode, target, source, **{"x.v": "q"})
