"""The tool node's DSL: its checks at validate time, the selectors it reads, its parameters.

Fields as Dify exports them: `provider_type` (builtin, api, ...), `provider_id`,
`provider_name`, `tool_name`; `tool_parameters` (name → `{type: mixed | variable |
constant, value}`: a template, a selector, a literal) and `tool_configurations` (name → a
literal, or the same `{type, value}` in `tool_node_version` 2). Parameters win over
configurations of the same name, as in Dify.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fanflow.dsl.checks import is_selector
from fanflow.errors import FanflowError
from fanflow.tools.base import Tool, coerce_parameters
from fanflow.tools.catalog import ToolNotFound, active_catalog
from fanflow.variables import Lookup, render, resolve_or_none

__all__ = ["check_tool", "resolve_tool_inputs", "tool_reads"]

_INPUT_TYPES = ("mixed", "variable", "constant")


def _typed(entry: Any) -> bool:
    return isinstance(entry, Mapping) and entry.get("type") in _INPUT_TYPES and "value" in entry


def check_tool(data: Mapping[str, Any], problems: list[str]) -> None:
    if not (data.get("provider_id") or data.get("provider_name")):
        problems.append("provider_id must name the tool provider")
    if not isinstance(data.get("tool_name"), str) or not data.get("tool_name"):
        problems.append(f"tool_name must be text, got {data.get('tool_name')!r}")
    for field in ("tool_parameters", "tool_configurations"):
        value = data.get(field)
        if value is not None and not isinstance(value, Mapping):
            problems.append(f"{field} must be a mapping of name to value, got {value!r}")
    parameters = data.get("tool_parameters")
    for name, entry in (parameters or {}).items() if isinstance(parameters, Mapping) else ():
        if not isinstance(entry, Mapping):
            continue  # a literal
        kind = entry.get("type")
        if kind not in _INPUT_TYPES:
            problems.append(
                f"tool_parameters.{name}.type must be mixed, variable or constant, got {kind!r}"
            )
        elif kind == "variable" and not is_selector(entry.get("value")):
            problems.append(
                f"tool_parameters.{name}.value must be a selector, got {entry.get('value')!r}"
            )
    if problems or not data:
        return
    try:
        catalog = active_catalog()
    except FanflowError as exc:  # the tools file is unreadable or malformed
        problems.append(str(exc))
        return
    try:
        catalog.find(
            str(data.get("provider_type") or "builtin"),
            str(data.get("provider_id") or ""),
            str(data.get("provider_name") or ""),
            str(data.get("tool_name")),
        )
    except ToolNotFound as exc:
        problems.append(str(exc))


def tool_reads(data: Mapping[str, Any]) -> Iterator[Any]:
    """The selectors of `variable` inputs (templates are found by their `{{#...#}}`)."""
    for field in ("tool_parameters", "tool_configurations"):
        entries = data.get(field)
        if isinstance(entries, Mapping):
            for entry in entries.values():
                if _typed(entry) and entry["type"] == "variable":
                    yield entry["value"]


def _value(entry: Any, lookup: Lookup) -> Any:
    if not _typed(entry):
        return entry  # a literal (tool_configurations before tool_node_version 2)
    value = entry["value"]
    if entry["type"] == "variable":
        return resolve_or_none(lookup, value) if is_selector(value) else None
    if entry["type"] == "mixed":
        return render(str(value if value is not None else ""), lookup)
    return value


def resolve_tool_inputs(
    data: Mapping[str, Any], tool: Tool, lookup: Lookup, label: str
) -> dict[str, Any]:
    """The call's parameters: configurations, then parameters, typed by the tool's schema."""
    given: dict[str, Any] = {}
    for field in ("tool_configurations", "tool_parameters"):
        entries = data.get(field)
        if isinstance(entries, Mapping):
            for name, entry in entries.items():
                given[str(name)] = _value(entry, lookup)
    return coerce_parameters(tool, given, label)
