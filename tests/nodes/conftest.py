"""Shared helpers for the node evaluator tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from fanflow.variables import Lookup, walk_path


def make_lookup(values: Mapping[str, Any]) -> Lookup:
    """A Lookup over `{"node.var": value}`; missing variables raise KeyError like the run's."""

    def lookup(selector: Sequence[str]) -> Any:
        if len(selector) < 2:
            raise KeyError(".".join(selector))
        key = f"{selector[0]}.{selector[1]}"
        if key not in values:
            raise KeyError(key)
        return walk_path(values[key], list(selector[2:]))

    return lookup


@pytest.fixture
def lookup_of() -> Callable[[Mapping[str, Any]], Lookup]:
    return make_lookup
