"""The (workflow, inputs) cases run through fanflow and through Dify's engine.

Workflows live in tests/data/differential; each is a Dify export (kind app) written for
this suite. Several inputs per file where they take different branches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "data" / "differential"


@dataclass(frozen=True)
class Case:
    workflow: str
    label: str
    inputs: dict[str, Any] = field(default_factory=dict)
    query: str | None = None

    @property
    def path(self) -> Path:
        return DATA / f"{self.workflow}.yml"

    @property
    def id(self) -> str:
        return f"{self.workflow}-{self.label}"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


_NUMBERS = {"nums": "[1,2,3,4,5,6,7]"}
_LISTS = {
    "words": ["apple", "banana", "kiwi", "pear", "", "nana"],
    "nums": [5, 1, 3.5, 2, 8],
    "flags": [True, False, True],
}
_GROUPS = [
    {"name": "g1", "members": ["x", "y"]},
    {"name": "g2", "members": []},
    {"name": "g3", "members": ["z"]},
]
_PEOPLE = [{"name": "ann lee", "age": 41}, {"name": "bob", "age": 7}, {"name": "cy", "age": 33}]

CASES: list[Case] = [
    # if-else operators, one if-else per check, the true branch reaching its own End
    Case("cond_strings", "match", {"s": "abc!", "t": "ab"}),
    Case("cond_strings", "empty", {"s": "", "t": ""}),
    Case("cond_strings", "t-missing", {"s": "x"}),
    Case("cond_strings", "hello", {"s": "Hello ABC", "t": "Hello"}),
    Case("cond_numbers", "five", {"n": 5, "m": 5}),
    Case("cond_numbers", "zero", {"n": 0, "m": 2.5}),
    Case("cond_numbers", "float-no-m", {"n": 2.5}),
    Case("cond_number_refs", "equal", {"n": 5, "m": 5}),
    Case("cond_number_refs", "less", {"n": 2.5, "m": 10}),
    Case("cond_number_refs", "int-vs-float-text", {"n": 3, "m": 2.5}),  # Dify: int('2.5') fails
    Case("cond_number_refs", "m-missing", {"n": 4}),
    Case(
        "cond_arrays",
        "full",
        {"data": _json({"strs": ["a", "b", "c"], "nums": [1, 2, 3], "flags": [True]})},
    ),
    Case("cond_arrays", "empty", {"data": _json({"strs": [], "nums": [], "flags": []})}),
    Case(
        "cond_arrays",
        "mixed",
        {"data": _json({"strs": ["ab"], "nums": [2.5], "flags": [True, False]})},
    ),
    Case("cond_booleans", "true-yes", {"flag": True, "word": "yes"}),
    Case("cond_booleans", "text-false", {"flag": "false", "word": "yes"}),
    Case("cond_cases_else", "gold", {"score": 95, "tag": "ok"}),
    Case("cond_cases_else", "silver-by-or", {"score": 10, "tag": "vip"}),
    Case("cond_cases_else", "bronze", {"score": 10, "tag": "x"}),
    Case("cond_cases_else", "else", {"score": 0, "tag": "x"}),
    # graph shapes
    Case("parallel_join", "int", {"name": "ada", "n": 3}),
    Case("skip_join", "yes", {"go": "yes", "text": "hey"}),
    Case("skip_join", "no", {"go": "no", "text": "hey"}),
    Case("skip_join", "maybe", {"go": "maybe", "text": "hey"}),
    Case("multi_end", "positive", {"x": 4}),
    Case("multi_end", "negative", {"x": -2.5}),
    Case("same_target_handles", "big", {"x": 50}),
    Case("skipped_reads", "b", {"go": "b"}),
    Case("skipped_condition", "a", {"go": "a"}),
    Case("skipped_condition", "b-fails", {"go": "b"}),
    Case("missing_ref_value", "literal", {"go": "b", "word": "1764000802235.text!"}),
    Case("missing_ref_value", "taken", {"go": "a", "word": "from a!"}),
    # data nodes
    Case("template_loops", "people", {"people": _json(_PEOPLE), "n": 7}),
    Case("template_loops", "nobody", {"people": "[]", "n": 2.5}),
    Case("aggregator_groups", "b", {"kind": "b"}),
    Case("aggregator_groups", "c", {"kind": "c"}),
    Case("list_ops", "lists", {"data": _json(_LISTS), "needle": "an"}),
    Case(
        "list_ops",
        "serial-out-of-range",
        {"data": _json({"words": [], "nums": [2], "flags": [False]}), "needle": "x"},
    ),
    Case("code_types", "int", {"word": "hé", "k": 3}),
    Case("code_output_checks", "nul-stripped", {"mode": "nul"}),
    Case("code_output_checks", "missing", {"mode": "missing"}),
    Case("code_output_checks", "extra", {"mode": "extra"}),
    Case("code_output_checks", "too-deep", {"mode": "deep"}),
    Case("code_type_errors", "bool-as-number", {"mode": "bool_as_number"}),
    Case("code_type_errors", "mixed-array", {"mode": "mixed_numbers"}),
    Case("code_type_errors", "huge", {"mode": "huge"}),
    Case("start_inputs", "defaults", {"text": "abc"}),
    Case(
        "start_inputs",
        "coerced",
        {
            "text": "abc",
            "para": "p",
            "choice": "red",
            "num": "3.50",
            "flag": "yes",
            "obj": {"a": [1]},
        },
    ),
    Case("start_inputs", "too-long", {"text": "abcdef"}),
    Case("start_inputs", "required-missing", {"para": "x"}),
    # assigner v2 in loops, loops
    Case("assigner_loop", "three", {"rounds": 3, "word": "w"}),
    Case("assigner_loop", "capped", {"rounds": 12, "word": "w"}),
    Case("assigner_clear", "three", {"rounds": 3}),
    Case("assigner_clear", "none", {"rounds": 0}),
    Case("loop_break", "limit", {"limit": 3, "stop_at": "-"}),
    Case("loop_break", "before-first", {"limit": 0, "stop_at": "-"}),
    Case("loop_break", "or-condition", {"limit": 20, "stop_at": "-"}),
    Case("loop_break", "loop-end", {"limit": 10, "stop_at": "c"}),
    Case("loop_constants", "spellings"),
    Case("skipped_loop_var", "b", {"go": "b"}),
    # iterations
    Case("iteration_modes", "some-fail", _NUMBERS),
    Case("iteration_modes", "all-fail", {"nums": "[3,6]"}),
    Case("iteration_terminated", "ok", {"nums": "[1,2,4.5]"}),
    Case("iteration_terminated", "fails", {"nums": "[1,3,4]"}),
    Case("iteration_flatten", "lists", {"nums": "[1,2,3]"}),
    Case("iteration_flatten", "with-null", {"nums": "[2,0,1.5]"}),
    Case("iteration_nested", "groups", {"groups": _json(_GROUPS)}),
    Case("iteration_loop", "doubling", {"nums": "[1,5,16,0.5]"}),
    Case("container_scopes", "copies", {"nums": "[2,3,2,5]"}),
    Case("skipped_iteration", "b", {"go": "b"}),
    # error strategies, retries, failed runs
    Case("error_strategies", "ok", {"x": 4}),
    Case("error_strategies", "divide-by-zero", {"x": 0}),
    Case("error_default_types", "fails", {"fail": True}),
    Case("error_none", "fails", {"x": 0}),
    Case("retry_handled", "always-fails", {"x": "a"}),
    Case("retry_failed", "always-fails", {"x": "a"}),
    # chatflows (answer nodes, sys.query)
    Case("chat_answers", "greeting", {"n": 3}, "hi bob"),
    Case("chat_answers", "shout", {}, "what now"),
    Case("chat_answers", "empty-query", {}, ""),
    Case("chat_render", "types", {"k": 3}, "q?"),
    Case("chat_skipped_answer", "a", {"go": "a"}, "hi"),
    Case("ref_pattern", "spellings", {}, "q"),
]
