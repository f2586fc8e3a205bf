"""`json_guard`: nesting found by one scan that skips strings, naming the field; bad text."""

from __future__ import annotations

import json

from fanflow_services.trigger.json_guard import nesting_error, storable, text_error


def test_brackets_inside_strings_do_not_count() -> None:
    body = json.dumps({"inputs": {"text": "[{" * 10_000, "quoted": '\\"[[[' * 1000}}).encode()
    assert nesting_error(body, max_depth=3) is None


def test_the_first_place_past_the_limit_is_named() -> None:
    body = b'{"inputs": {"a": 1, "list": [0, 1, {"k": [[[1]]]}]}}'
    assert nesting_error(body, max_depth=4) == (
        "inputs.list[2].k: nested deeper than 4 levels of arrays and objects"
    )
    assert nesting_error(body, max_depth=7) is None
    assert nesting_error(b"[" * 100_000) == (
        "body[0][0][0][0][0][0]...: nested deeper than 64 levels of arrays and objects"
    )
    deep_input = b'{"inputs": {"doc": ' + b'{"a": ' * 100 + b"1" + b"}" * 100 + b"}}"
    assert nesting_error(deep_input) == (
        "inputs.doc.a.a.a.a...: nested deeper than 64 levels of arrays and objects"
    )


def test_unstorable_text_is_named_with_its_path() -> None:
    assert text_error({"inputs": {"a": ["ok", "x\ud800"]}}) == (
        "inputs.a[1]: contains a lone surrogate (\\ud800), which is not valid Unicode text"
    )
    assert text_error({"user": "a\x00"}) == (
        "user: contains a NUL character (\\u0000), which cannot be stored"
    )
    assert text_error({"inputs": {"\udfff": 1}}) is not None
    assert text_error({"inputs": {"emoji": "\U0001f600", "n": 1, "z": None}}) is None
    assert storable("run-1") and not storable("a\x00") and not storable("\ud800")
