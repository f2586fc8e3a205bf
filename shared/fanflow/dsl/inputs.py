"""Which variables a node reads: the selectors the scheduler resolves and ships with a task,
and the validator checks against the graph.

Most selectors sit under keys with 'selector' in their name (`referenced_selectors` finds
them); the `*_reads` functions here list the others, per node type, as `fanflow.registry`
names them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fanflow.dsl.checks import active_data, is_selector
from fanflow.registry import node_type
from fanflow.variables import Selector, referenced_selectors
from fanflow.workflow import Node


def node_selectors(node: Node) -> list[Selector]:
    """Every selector `node` reads: `referenced_selectors` plus the fields it cannot spot."""
    found = dict.fromkeys(referenced_selectors(active_data(node.data)))
    declared = node_type(node.type)
    if declared is not None and declared.reads is not None:
        for candidate in declared.reads(node.data):
            if is_selector(candidate):
                found.setdefault(tuple(candidate), None)
    return list(found)


def aggregator_reads(data: Mapping[str, Any]) -> Iterator[Any]:
    yield from data.get("variables") or []
    settings = data.get("advanced_settings")
    if isinstance(settings, Mapping) and settings.get("group_enabled"):
        for group in settings.get("groups") or []:
            if isinstance(group, Mapping):
                yield from group.get("variables") or []


def loop_reads(data: Mapping[str, Any]) -> Iterator[Any]:
    for item in _mappings(data.get("loop_variables")):
        if item.get("value_type") == "variable":
            yield item.get("value")


def assigner_reads(data: Mapping[str, Any]) -> Iterator[Any]:
    for item in _mappings(data.get("items")):
        if item.get("input_type") == "variable":
            yield item.get("value")


def list_operator_reads(data: Mapping[str, Any]) -> Iterator[Any]:
    yield data.get("variable")


def parameter_extractor_reads(data: Mapping[str, Any]) -> Iterator[Any]:
    yield data.get("query")


def http_reads(data: Mapping[str, Any]) -> Iterator[Any]:
    """The file variables of form-data file items and of a binary body."""
    body = data.get("body")
    if isinstance(body, Mapping) and isinstance(body.get("data"), list):
        for item in _mappings(body["data"]):
            if item.get("type") == "file":
                yield item.get("file")


def _mappings(value: Any) -> Iterable[Mapping[str, Any]]:
    return [item for item in value or [] if isinstance(item, Mapping)]
