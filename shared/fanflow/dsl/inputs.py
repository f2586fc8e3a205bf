"""Which variables a node reads: the selectors the scheduler resolves and ships with a task,
and the validator checks against the graph."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fanflow.variables import Selector, referenced_selectors
from fanflow.workflow import Node


def node_selectors(node: Node) -> list[Selector]:
    """Every selector `node` reads: `referenced_selectors` plus the fields it cannot spot."""
    found = dict.fromkeys(referenced_selectors(node.data))
    for selector in _untagged_selectors(node):
        found.setdefault(selector, None)
    return list(found)


def _untagged_selectors(node: Node) -> Iterator[Selector]:
    """Selectors kept under keys without 'selector' in their name."""
    data = node.data
    candidates: list[Any] = []
    if node.type in ("variable-aggregator", "variable-assigner"):
        candidates.extend(data.get("variables") or [])
        settings = data.get("advanced_settings")
        if isinstance(settings, Mapping) and settings.get("group_enabled"):
            for group in settings.get("groups") or []:
                if isinstance(group, Mapping):
                    candidates.extend(group.get("variables") or [])
    elif node.type == "loop":
        for item in data.get("loop_variables") or []:
            if isinstance(item, Mapping) and item.get("value_type") == "variable":
                candidates.append(item.get("value"))
    elif node.type == "assigner":
        for item in data.get("items") or []:
            if isinstance(item, Mapping) and item.get("input_type") == "variable":
                candidates.append(item.get("value"))
    elif node.type == "list-operator":
        candidates.append(data.get("variable"))
    elif node.type == "parameter-extractor":
        candidates.append(data.get("query"))
    for candidate in candidates:
        if (
            isinstance(candidate, list)
            and len(candidate) >= 2
            and all(isinstance(part, str) and part for part in candidate)
        ):
            yield tuple(candidate)
