"""If-else conditions and loop break conditions, against Dify's condition processor.

Cases marked "oracle" were confirmed by running them through Dify's engine (graphon 0.8.0).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from fanflow.errors import NodeError
from fanflow.nodes import evaluate_break, evaluate_cases, evaluate_condition
from fanflow.nodes.conditions import TYPE_ERROR, VALUE_ERROR

from .conftest import make_lookup

FILE = {"dify_model_identity": "__dify__file__", "type": "image", "transfer_method": "local_file"}


def cond(op: str, value: Any = None, selector: tuple[str, ...] = ("s", "x"), **extra: Any) -> dict:
    return {"variable_selector": list(selector), "comparison_operator": op, "value": value, **extra}


def check(op: str, actual: Any, value: Any = None) -> bool:
    return evaluate_condition(cond(op, value), make_lookup({"s.x": actual}))


@pytest.mark.parametrize(
    ("op", "actual", "value", "expected"),
    [
        # contains / not contains: strings and arrays; falsy actual short-circuits
        ("contains", "hello world", "world", True),
        ("contains", "hello", "xyz", False),
        ("contains", ["a", "b"], "b", True),
        ("contains", [1, 2], "1", False),  # oracle: no conversion of the expected text
        ("contains", None, "a", False),  # oracle
        ("contains", "", "", False),
        ("contains", 0, "0", False),  # oracle: falsy actual, no type error
        ("contains", "['a']", ["a"], True),  # oracle: a list value compared by its repr
        ("not contains", None, "a", True),  # oracle
        ("not contains", [], "a", True),
        ("not contains", "abc", "b", False),
        ("not contains", ["a"], "b", True),
        # start with / end with
        ("start with", "hello", "he", True),
        ("start with", "hello", "lo", False),
        ("start with", None, "x", False),
        ("end with", "hello", "lo", True),
        ("end with", "", "x", False),
        # is / is not: strings and booleans only; null is never "is" nor "is not"
        ("is", "a", "a", True),
        ("is", "a", "b", False),
        ("is", None, "a", False),
        ("is not", "a", "b", True),
        ("is not", "a", "a", False),
        ("is not", None, "a", False),  # oracle
        ("is", True, "true", True),  # oracle: boolean expected decoded as JSON
        ("is", False, "true", False),
        ("is", True, True, True),
        ("is not", True, "false", True),
        # empty / not empty
        ("empty", "", None, True),
        ("empty", None, None, True),
        ("empty", [], None, True),
        ("empty", {}, None, True),
        ("empty", 0, None, True),
        ("empty", "a", None, False),
        ("not empty", [0], None, True),
        ("not empty", None, None, False),
        ("empty", False, None, True),  # oracle: a null value is not converted
        # in / not in
        ("in", "a", ["a", "b"], True),  # oracle
        ("in", "c", ["a", "b"], False),
        ("in", None, ["a"], False),
        ("in", "", "anything", False),
        ("not in", "c", ["a", "b"], True),
        ("not in", None, ["a"], True),
        ("not in", "a", ["a"], False),
        # all of: list of strings (substrings of a string actual) or booleans
        ("all of", ["a", "b", "c"], ["a", "c"], True),
        ("all of", ["a"], ["a", "c"], False),
        ("all of", "abc", ["ab", "c"], True),  # oracle
        ("all of", None, ["a"], False),
        ("all of", ["a"], [], True),
        ("all of", 5, ["a"], False),
        ("all of", [True, False], ["true"], True),
        ("all of", [True], ["false"], False),
        # numbers: = and ≠ convert the expected text to the actual's type
        ("=", 3, "3", True),
        ("=", 3, "4", False),
        ("=", 2.0, "2", True),  # oracle
        ("=", 2.5, "2.5", True),
        ("=", None, "1", False),
        ("≠", 3, "4", True),
        ("≠", 3, "3", False),
        ("≠", None, "3", False),
        ("=", True, "1", True),  # oracle
        ("=", False, "true", False),
        ("=", 1, True, True),
        # ordering: the expected text goes through float()
        (">", 3, "2.5", True),  # oracle
        (">", 3, "3", False),
        ("<", 3, "3.5", True),
        ("≥", 3, "3", True),
        ("≥", 2.5, "3", False),
        ("≤", 3, "3.0", True),
        ("≤", -1, "-1", True),
        (">", None, "1", False),
        (">", 10**20, "1e20", False),
        (">", 10**20 + 1, "1e20", True),  # integers stay exact when the bound is integral
        (">", True, "0", True),
        # null / not null / exists / not exists
        ("null", None, None, True),
        ("null", "", None, False),
        ("not null", 0, None, True),
        ("not null", None, None, False),
        ("exists", None, None, False),
        ("exists", "", None, True),
        ("not exists", None, None, True),
        ("not exists", [], None, False),
    ],
)
def test_operators(op: str, actual: Any, value: Any, expected: bool) -> None:
    assert check(op, actual, value) is expected


@pytest.mark.parametrize(
    ("op", "actual", "value", "message", "error_type"),
    [
        ("=", "a", "a", "'=' and '≠' need a number or boolean variable", VALUE_ERROR),  # oracle
        ("=", 3, "3.5", "cannot convert '3.5' to int", VALUE_ERROR),  # oracle
        ("=", 3, "abc", "cannot convert 'abc' to int", VALUE_ERROR),
        ("=", 3, ["3"], "cannot compare a number with array", VALUE_ERROR),
        (">", "5", "3", "numeric comparison needs a number variable", VALUE_ERROR),
        (">", 5, "x", "Cannot convert 'x' to number", VALUE_ERROR),
        ("<", 5, ["1"], "Cannot convert array to number", VALUE_ERROR),
        ("contains", 5, "5", "'contains' needs a string or an array", VALUE_ERROR),
        ("contains", {"a": 1}, "a", "'contains' needs a string or an array", VALUE_ERROR),
        ("not contains", 7, "7", "'contains' needs a string or an array", VALUE_ERROR),
        ("start with", 12, "1", "'start with' needs a string variable", TYPE_ERROR),  # oracle
        ("end with", "abc", ["c"], "'end with' needs a string value", TYPE_ERROR),
        ("is", 1, "1", "'is' needs a string or boolean variable", VALUE_ERROR),
        ("is not", ["a"], "a", "'is' needs a string or boolean variable", VALUE_ERROR),
        ("in", "a", "abc", "'in' needs an array value", VALUE_ERROR),
        ("not in", "a", "abc", "'in' needs an array value", VALUE_ERROR),
        ("all of", ["a"], "a", "'all of' needs a list of strings or of booleans", VALUE_ERROR),
        ("all of", None, "a", "'all of' needs a list", VALUE_ERROR),
        # a boolean variable's expected value is JSON, even for unary operators
        ("empty", True, "", "must be true, false or a number", VALUE_ERROR),  # oracle
        ("is", True, '"x"', "unexpected value for a boolean variable", TYPE_ERROR),  # oracle
        ("is", True, "yes", "must be true, false or a number", VALUE_ERROR),
        ("bogus", "a", "a", "Unsupported comparison_operator: 'bogus'", VALUE_ERROR),
    ],
)
def test_operator_errors(op: str, actual: Any, value: Any, message: str, error_type: str) -> None:
    with pytest.raises(NodeError, match=message.replace("(", r"\(").replace("[", r"\[")) as info:
        check(op, actual, value)
    assert info.value.error_type == error_type


def test_missing_variable_fails_even_for_existence_operators() -> None:  # oracle
    for op in ("exists", "not exists", "null", "empty"):
        with pytest.raises(NodeError, match=r"Variable \['s', 'nope'\] not found"):
            evaluate_condition(cond(op, selector=("s", "nope")), make_lookup({}))


def test_path_selector_into_object() -> None:
    lookup = make_lookup({"s.obj": {"name": "Ann", "tags": ["x"]}})
    assert evaluate_condition(cond("is", "Ann", ("s", "obj", "name")), lookup)
    assert evaluate_condition(cond("contains", "x", ("s", "obj", "tags")), lookup)
    with pytest.raises(NodeError, match="not found"):
        evaluate_condition(cond("is", "Ann", ("s", "obj", "age")), lookup)


@pytest.mark.parametrize(
    ("value", "values", "expected"),
    [
        ("{{#n.word#}}", {"s.x": "say hello", "n.word": "hello"}, True),
        ("{{#n.word#}}!", {"s.x": "hello!", "n.word": "hello"}, True),
        ("{{#n.num#}}", {"s.x": 5, "n.num": 5}, True),
        # a missing reference stays as its dotted selector text (oracle)
        ("{{#n.gone#}}", {"s.x": "xx n.gone yy"}, True),
        ("{{#n.gone#}}", {"s.x": "xx yy"}, False),
    ],
)
def test_value_references_are_rendered(value: str, values: dict, expected: bool) -> None:
    op = "=" if isinstance(values["s.x"], int) else "contains"
    assert evaluate_condition(cond(op, value), make_lookup(values)) is expected


def test_numeric_constant_value_is_read_as_text() -> None:
    assert check("=", 4, 4)
    assert check(">", 4.5, 4)


class TestSubConditions:
    files: ClassVar[list[dict[str, Any]]] = [
        {**FILE, "filename": "a.png", "extension": "png", "size": 10, "mime_type": "image/png"},
        {**FILE, "type": "document", "filename": "b.pdf", "extension": ".pdf", "size": 300},
    ]

    def run(self, op: str, subs: list[dict], logical: str = "and", items: Any = None) -> bool:
        sub = {"logical_operator": logical, "conditions": subs}
        condition = cond(op, "", sub_variable_condition=sub)
        return evaluate_condition(
            condition, make_lookup({"s.x": self.files if items is None else items})
        )

    @pytest.mark.parametrize(
        ("op", "subs", "logical", "expected"),
        [
            (
                "contains",
                [{"key": "type", "comparison_operator": "is", "value": "image"}],
                "and",
                True,
            ),
            (
                "contains",
                [{"key": "type", "comparison_operator": "is", "value": "video"}],
                "and",
                False,
            ),
            (
                "contains",
                [{"key": "extension", "comparison_operator": "is", "value": "pdf"}],
                "and",
                True,
            ),
            (
                "contains",
                [{"key": "extension", "comparison_operator": "is", "value": ".png"}],
                "and",
                True,
            ),
            (
                "contains",
                [{"key": "size", "comparison_operator": ">", "value": "100"}],
                "and",
                True,
            ),
            (
                "contains",
                [{"key": "name", "comparison_operator": "end with", "value": ".pdf"}],
                "and",
                True,
            ),
            (
                "contains",
                [{"key": "type", "comparison_operator": "in", "value": ["video", "image"]}],
                "and",
                True,
            ),
            # a negated operator must hold for every element
            (
                "not contains",
                [{"key": "type", "comparison_operator": "is not", "value": "video"}],
                "and",
                True,
            ),
            (
                "not contains",
                [{"key": "type", "comparison_operator": "is not", "value": "image"}],
                "and",
                False,
            ),
            (
                "all of",
                [
                    {"key": "type", "comparison_operator": "is", "value": "video"},
                    {"key": "size", "comparison_operator": "<", "value": "50"},
                ],
                "or",
                True,
            ),
            (
                "contains",
                [
                    {"key": "type", "comparison_operator": "is", "value": "video"},
                    {"key": "size", "comparison_operator": "<", "value": "50"},
                ],
                "and",
                False,
            ),
            ("contains", [], "and", True),
        ],
    )
    def test_files(self, op: str, subs: list[dict], logical: str, expected: bool) -> None:
        assert self.run(op, subs, logical) is expected

    def test_empty_file_list(self) -> None:
        subs = [{"key": "type", "comparison_operator": "is", "value": "image"}]
        assert self.run("contains", subs, items=[]) is False
        negated = [{"key": "type", "comparison_operator": "is not", "value": "image"}]
        assert self.run("contains", negated, items=[]) is True

    def test_outer_operator_only_selects_sub_conditions(self) -> None:
        # As in Dify: "not contains" does not negate; the sub-condition operators decide.
        subs = [{"key": "type", "comparison_operator": "is", "value": "image"}]
        assert self.run("not contains", subs) is self.run("contains", subs) is True

    def test_objects_by_key(self) -> None:
        # fanflow extension: Dify only applies sub-conditions to file arrays
        items = [{"k": "v", "n": 2}, {"k": "w", "n": 5}]
        assert self.run(
            "contains", [{"key": "k", "comparison_operator": "is", "value": "w"}], items=items
        )
        assert not self.run(
            "contains", [{"key": "n", "comparison_operator": ">", "value": "9"}], items=items
        )

    def test_files_need_a_sub_condition(self) -> None:
        with pytest.raises(NodeError, match="sub_variable_condition is required"):
            evaluate_condition(cond("contains", "image"), make_lookup({"s.x": self.files}))

    def test_unknown_file_attribute(self) -> None:
        with pytest.raises(NodeError, match="'colour' is not a file attribute"):
            self.run("contains", [{"key": "colour", "comparison_operator": "is", "value": "red"}])

    def test_extension_value_must_be_text(self) -> None:
        with pytest.raises(NodeError, match="must be a string") as info:
            self.run(
                "contains", [{"key": "extension", "comparison_operator": "in", "value": ["pdf"]}]
            )
        assert info.value.error_type == TYPE_ERROR

    def test_other_operators_ignore_sub_conditions(self) -> None:
        assert self.run("not empty", [{"key": "type", "comparison_operator": "is", "value": "x"}])


class TestCases:
    @staticmethod
    def data(*cases: tuple[str, str, list[dict]]) -> dict:
        return {
            "cases": [
                {"case_id": cid, "logical_operator": lop, "conditions": conds}
                for cid, lop, conds in cases
            ]
        }

    def test_first_true_case_wins(self) -> None:
        lookup = make_lookup({"s.x": "hello"})
        data = self.data(
            ("a", "and", [cond("contains", "zzz")]),
            ("b", "or", [cond("contains", "zzz"), cond("start with", "he")]),
            ("c", "and", [cond("contains", "l")]),
        )
        assert evaluate_cases(data, lookup) == "b"

    def test_no_true_case_gives_false(self) -> None:
        data = self.data(("a", "and", [cond("is", "x")]))
        assert evaluate_cases(data, make_lookup({"s.x": "y"})) == "false"

    @pytest.mark.parametrize(("lop", "expected"), [("and", "a"), ("or", "false")])
    def test_case_without_conditions(self, lop: str, expected: str) -> None:  # oracle
        assert evaluate_cases(self.data(("a", lop, [])), make_lookup({})) == expected

    def test_no_cases(self) -> None:
        assert evaluate_cases({"cases": []}, make_lookup({})) == "false"

    def test_legacy_shape(self) -> None:
        data = {"logical_operator": "and", "conditions": [cond("is", "y")]}
        assert evaluate_cases(data, make_lookup({"s.x": "y"})) == "true"
        assert evaluate_cases(data, make_lookup({"s.x": "n"})) == "false"
        assert evaluate_cases({"conditions": []}, make_lookup({})) == "true"

    def test_short_circuit_hides_later_errors(self) -> None:
        lookup = make_lookup({"s.x": "y"})
        failing = cond("is", "y", ("s", "missing"))
        assert (
            evaluate_cases(self.data(("a", "and", [cond("is", "n"), failing])), lookup) == "false"
        )
        assert evaluate_cases(self.data(("a", "or", [cond("is", "y"), failing])), lookup) == "a"
        with pytest.raises(NodeError, match="not found"):
            evaluate_cases(self.data(("a", "and", [cond("is", "y"), failing])), lookup)

    def test_later_case_error_after_a_true_case_never_surfaces(self) -> None:
        lookup = make_lookup({"s.x": "y"})
        data = self.data(("a", "and", [cond("is", "y")]), ("b", "and", [cond("=", "1")]))
        assert evaluate_cases(data, lookup) == "a"

    def test_numeric_case_id_is_text(self) -> None:
        data = {"cases": [{"case_id": 7, "logical_operator": "and", "conditions": []}]}
        assert evaluate_cases(data, make_lookup({})) == "7"


class TestBreak:
    def test_no_conditions_never_break(self) -> None:
        assert evaluate_break([], "and", make_lookup({})) is False

    @pytest.mark.parametrize(("lop", "expected"), [("and", False), ("or", True)])
    def test_logical_operator(self, lop: str, expected: bool) -> None:
        lookup = make_lookup({"s.x": 5})
        conditions = [cond("≥", "5"), cond("<", "5")]
        assert evaluate_break(conditions, lop, lookup) is expected

    def test_errors_propagate(self) -> None:
        with pytest.raises(NodeError) as info:
            evaluate_break([cond("=", "1", ("loop", "n"))], "and", make_lookup({}))
        assert info.value.error_type == VALUE_ERROR
