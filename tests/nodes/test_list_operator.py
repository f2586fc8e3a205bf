"""List operator, against Dify's list-operator node ("oracle": confirmed with graphon 0.8.0)."""

from __future__ import annotations

from typing import Any

import pytest

from fanflow.errors import NodeError
from fanflow.nodes import operate_list

from .conftest import make_lookup

FILE = {"dify_model_identity": "__dify__file__", "transfer_method": "local_file"}
FILES = [
    {
        **FILE,
        "type": "image",
        "filename": "b.png",
        "extension": ".png",
        "size": 30,
        "mime_type": "image/png",
    },
    {**FILE, "type": "document", "filename": "a.pdf", "extension": ".pdf", "size": 10},
    {
        **FILE,
        "type": "image",
        "filename": "c.jpg",
        "extension": ".jpg",
        "size": 20,
        "transfer_method": "remote_url",
        "remote_url": "https://x/c.jpg",
    },
]


def run(value: Any, extra: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"variable": ["s", "x"]}
    for name, section in sections.items():
        data[name] = {"enabled": True, **section}
    return operate_list(data, make_lookup({"s.x": value, **(extra or {})}))


def where(*conditions: tuple[str, Any] | tuple[str, str, Any]) -> dict[str, Any]:
    built = []
    for condition in conditions:
        key, op, value = condition if len(condition) == 3 else ("", *condition)
        built.append({"key": key, "comparison_operator": op, "value": value})
    return {"conditions": built}


def result(value: Any, **sections: Any) -> list[Any]:
    return run(value, **sections)["result"]


@pytest.mark.parametrize(
    ("items", "conditions", "expected"),
    [
        (["apple", "banana", "cherry"], [("contains", "an")], ["banana"]),
        (["apple", "banana"], [("not contains", "an")], ["apple"]),
        (["apple", "banana"], [("start with", "a")], ["apple"]),
        (["apple", "banana"], [("end with", "a")], ["banana"]),
        (["a", "b"], [("is", "a")], ["a"]),
        (["a", "b"], [("is not", "a")], ["b"]),
        (["a", "bc", "z"], [("in", "abc")], ["a", "bc"]),  # oracle: substring of the value
        (["a", "bc", "z"], [("not in", "abc")], ["z"]),
        (["", "x", ""], [("empty", "")], ["", ""]),
        (["", "x"], [("not empty", "")], ["x"]),
        (["apple", "avocado", "banana"], [("start with", "a"), ("contains", "c")], ["avocado"]),
        ([3, 1, 2.5], [("≥", "2")], [3, 2.5]),  # oracle
        ([3, 1, 2], [("=", "1")], [1]),
        ([3, 1, 2], [("≠", "1")], [3, 2]),
        ([3, 1, 2], [("<", "2.5")], [1, 2]),
        ([3, 1, 2], [("≤", "2")], [1, 2]),
        ([3, 1, 2], [(">", "1")], [3, 2]),
        ([3, 1, 2], [(">", 1)], [3, 2]),  # a number constant is read as text
        ([True, False, True], [("is", True)], [True, True]),  # oracle
        ([True, False], [("is not", True)], [False]),
    ],
)
def test_filters(items: list[Any], conditions: list[tuple[str, Any]], expected: list[Any]) -> None:
    assert result(items, filter_by=where(*conditions)) == expected


def test_filter_value_references() -> None:
    out = run(["ab", "cd"], {"n.q": "c"}, filter_by=where(("start with", "{{#n.q#}}")))
    assert out["result"] == ["cd"]
    number = run([1, 5, 9], {"n.min": 4}, filter_by=where((">", "{{#n.min#}}")))
    assert number["result"] == [5, 9]


@pytest.mark.parametrize(
    ("conditions", "names"),
    [
        ([("type", "in", ["image"])], ["b.png", "c.jpg"]),
        ([("type", "not in", ["image"])], ["a.pdf"]),
        ([("transfer_method", "in", ["remote_url"])], ["c.jpg"]),
        ([("extension", "is", ".pdf")], ["a.pdf"]),
        ([("name", "start with", "c")], ["c.jpg"]),
        ([("mime_type", "empty", "")], ["a.pdf", "c.jpg"]),
        ([("size", ">", "15")], ["b.png", "c.jpg"]),
        ([("url", "contains", "https")], ["c.jpg"]),
        ([("type", "in", "image"), ("size", "<", "25")], ["c.jpg"]),
    ],
)
def test_file_filters(conditions: list[tuple[str, str, Any]], names: list[str]) -> None:
    out = result(FILES, filter_by=where(*conditions))
    assert [f["filename"] for f in out] == names


@pytest.mark.parametrize(
    ("key", "order", "names"),
    [
        ("name", "asc", ["a.pdf", "b.png", "c.jpg"]),
        ("size", "desc", ["b.png", "c.jpg", "a.pdf"]),
        ("type", "asc", ["a.pdf", "b.png", "c.jpg"]),
    ],
)
def test_order_files(key: str, order: str, names: list[str]) -> None:
    out = result(FILES, order_by={"key": key, "value": order})
    assert [f["filename"] for f in out] == names


@pytest.mark.parametrize(
    ("items", "order", "expected"),
    [
        ([3, 1, 2.5], "asc", [1, 2.5, 3]),
        ([3, 1, 2.5], "desc", [3, 2.5, 1]),
        (["b", "a", "C"], "asc", ["C", "a", "b"]),
        ([True, False], "asc", [False, True]),
    ],
)
def test_order(items: list[Any], order: str, expected: list[Any]) -> None:
    assert result(items, order_by={"key": "", "value": order}) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [(2, [3, 1]), (0, []), (10, [3, 1, 2]), (-1, [3, 1]), ("1", [3])],  # oracle: -1 drops the last
)
def test_limit(size: Any, expected: list[Any]) -> None:
    assert result([3, 1, 2], limit={"size": size}) == expected


def test_limit_default_size_drops_last() -> None:  # oracle
    assert result([3, 1, 2], limit={}) == [3, 1]


@pytest.mark.parametrize(("serial", "expected"), [("1", [3]), ("3", [2]), (2, [1]), (" 2 ", [1])])
def test_extract(serial: Any, expected: list[Any]) -> None:
    assert result([3, 1, 2], extract_by={"serial": serial}) == expected


def test_extract_serial_reference() -> None:
    assert run([3, 1, 2], {"n.i": 3}, extract_by={"serial": "{{#n.i#}}"})["result"] == [2]


def test_operation_order_is_filter_extract_order_limit() -> None:  # oracle
    out = run(
        [5, 3, 1, 4, 2],
        filter_by=where((">", "1")),  # [5, 3, 4, 2]
        extract_by={"serial": "2"},  # [3]
        order_by={"key": "", "value": "desc"},
        limit={"size": 5},
    )
    assert out == {"result": [3], "first_record": 3, "last_record": 3}


def test_first_and_last_record() -> None:
    assert run(["a", "b", "c"]) == {
        "result": ["a", "b", "c"],
        "first_record": "a",
        "last_record": "c",
    }
    assert run(["a", "b"], filter_by=where(("is", "z"))) == {
        "result": [],
        "first_record": None,
        "last_record": None,
    }


@pytest.mark.parametrize("value", [None, [], "", 0, {}])
def test_empty_or_null_input(value: Any) -> None:  # oracle (None)
    out = run(value, filter_by=where(("bogus", 1)), extract_by={"serial": "9"})
    assert out == {"result": [], "first_record": None, "last_record": None}


def test_disabled_sections_are_ignored() -> None:
    data = {
        "variable": ["s", "x"],
        "filter_by": {
            "enabled": False,
            "conditions": [{"comparison_operator": "is", "value": "z"}],
        },
        "limit": {"enabled": False, "size": 1},
        "order_by": {"enabled": False, "value": "desc"},
        "extract_by": {"enabled": False, "serial": "9"},
    }
    assert operate_list(data, make_lookup({"s.x": ["b", "a"]}))["result"] == ["b", "a"]


def test_result_is_a_new_list() -> None:
    items = ["a", "b"]
    out = run(items)
    out["result"].append("c")
    assert items == ["a", "b"]


@pytest.mark.parametrize(
    ("value", "sections", "message"),
    [
        ([{"a": 1}], {}, r"must be an array of .* got array\[object\]"),  # oracle
        ("abc", {}, "got str"),  # oracle
        ([1, "a"], {}, "mixed or nested"),  # oracle
        ([[1], [2]], {}, "mixed or nested"),
        (
            [1],
            {"extract_by": {"serial": "0"}},
            "Invalid serial index: must be >= 1, got 0",
        ),  # oracle
        ([1], {"extract_by": {"serial": "2"}}, "Invalid serial index: must be <= 1, got 2"),
        ([1], {"extract_by": {"serial": "x"}}, "extract_by.serial must be an integer"),
        ([1], {"limit": {"size": "x"}}, "limit.size must be an integer"),
        (["a"], {"filter_by": where(("=", "1"))}, "Invalid condition: ="),
        ([1], {"filter_by": where(("contains", "1"))}, "Invalid condition: contains"),
        ([1], {"filter_by": where((">", "abc"))}, "filter value must be a number"),
        (["a"], {"filter_by": where(("is", ["a"]))}, "Invalid filter value"),
        (
            [True],
            {"filter_by": where(("is", "true"))},
            "Boolean filter expects a boolean",
        ),  # oracle
        ([True], {"filter_by": where(("contains", True))}, "Invalid condition: contains"),
        (FILES, {"filter_by": where(("colour", "is", "red"))}, "Invalid key: colour"),
        (FILES, {"filter_by": where(("type", "is", "image"))}, "Invalid condition: is"),
        (FILES, {"filter_by": where(("name", "is", True))}, "File filter expects a string"),
        (FILES, {"order_by": {"key": "colour", "value": "asc"}}, "Invalid order key: colour"),
    ],
)
def test_errors(value: Any, sections: dict[str, Any], message: str) -> None:
    with pytest.raises(NodeError, match=message):
        run(
            value,
            **{
                k: {key: v for key, v in s.items() if key != "enabled"} for k, s in sections.items()
            },
        )


def test_missing_variable() -> None:  # oracle
    with pytest.raises(NodeError, match=r"Variable not found for selector: \['s', 'x'\]"):
        operate_list({"variable": ["s", "x"]}, make_lookup({}))
