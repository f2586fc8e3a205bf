"""Variable aggregator: the first variable that exists, as Dify's node picks it."""

from __future__ import annotations

from fanflow.nodes import aggregate

from .conftest import make_lookup


def test_first_existing_variable() -> None:
    data = {"variables": [["a", "out"], ["b", "out"], ["c", "out"]]}
    assert aggregate(data, make_lookup({"b.out": "B", "c.out": "C"})) == {"output": "B"}


def test_a_null_that_exists_wins() -> None:
    # Dify checks the variable exists, not that it is non-null
    data = {"variables": [["a", "out"], ["b", "out"]]}
    assert aggregate(data, make_lookup({"a.out": None, "b.out": "B"})) == {"output": None}


def test_nothing_exists_gives_no_output() -> None:
    assert aggregate({"variables": [["a", "out"]]}, make_lookup({})) == {}
    assert aggregate({"variables": []}, make_lookup({})) == {}


def test_paths_and_short_selectors() -> None:
    data = {"variables": [["a"], ["a", "obj", "missing"], ["a", "obj", "k"]]}
    assert aggregate(data, make_lookup({"a.obj": {"k": 3}})) == {"output": 3}


def test_groups() -> None:
    data = {
        "variables": [["ignored", "x"]],
        "advanced_settings": {
            "group_enabled": True,
            "groups": [
                {
                    "group_name": "g1",
                    "output_type": "string",
                    "variables": [["a", "x"], ["b", "x"]],
                },
                {"group_name": "g2", "output_type": "number", "variables": [["c", "x"]]},
                {
                    "group_name": "g3",
                    "output_type": "number",
                    "variables": [["d", "x"], ["e", "x"]],
                },
            ],
        },
    }
    lookup = make_lookup({"b.x": "B", "e.x": 5, "ignored.x": "I"})
    assert aggregate(data, lookup) == {"g1": {"output": "B"}, "g3": {"output": 5}}


def test_groups_disabled_uses_variables() -> None:
    data = {
        "variables": [["a", "x"]],
        "advanced_settings": {
            "group_enabled": False,
            "groups": [{"group_name": "g", "variables": [["b", "x"]]}],
        },
    }
    assert aggregate(data, make_lookup({"a.x": 1, "b.x": 2})) == {"output": 1}
