"""Build a `Workflow` from the `{nodes, edges}` graph of a DSL document.

Reads nodes (id, type, title, container, error strategy, retry, default values), edges and
the environment and conversation variables, reporting every malformed entry and skipping it.
The document shapes are told apart in `fanflow.dsl.load`, which calls `build_workflow`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from fanflow.errors import Problem
from fanflow.registry import RETRYABLE_NODE_TYPES
from fanflow.workflow import DefaultValue, Edge, EnvironmentVariable, Node, RetryConfig, Workflow

__all__ = ["ERROR_STRATEGIES", "build_workflow"]

ERROR_STRATEGIES = frozenset({"fail-branch", "default-value"})


def build_workflow(
    graph: Mapping[str, Any],
    *,
    name: str,
    mode: str,
    version: str,
    kind: str,
    wf: Mapping[str, Any],
) -> tuple[Workflow | None, list[Problem]]:
    """The workflow of `graph` (None when its nodes or edges are not lists) and its problems."""
    problems: list[Problem] = []
    raw_nodes = graph.get("nodes")
    raw_edges = graph.get("edges")
    if raw_nodes is None:
        raw_nodes = []
    if raw_edges is None:
        raw_edges = []
    if not isinstance(raw_nodes, list) or not isinstance(raw_edges, list):
        return None, [Problem("graph 'nodes' and 'edges' must be lists")]

    nodes: dict[str, Node] = {}
    owners: dict[str, tuple[str, ...]] = {}
    notes: set[str] = set()
    for index, raw in enumerate(raw_nodes):
        if isinstance(raw, Mapping) and raw.get("type") == "custom-note":
            if raw.get("id") is not None:
                notes.add(str(raw["id"]))
            continue
        node, candidates = _parse_node(raw, index, problems)
        if node is None:
            continue
        if node.id in nodes:
            problems.append(Problem("duplicate node id", node.id, node.title))
            continue
        nodes[node.id] = node
        owners[node.id] = candidates
    parents = _resolve_parents(owners, problems, nodes)
    nodes = {
        node_id: replace(node, parent_id=parents[node_id]) if node_id in parents else node
        for node_id, node in nodes.items()
    }

    edges: list[Edge] = []
    for index, raw in enumerate(raw_edges):
        edge = _parse_edge(raw, index, problems)
        if edge is not None and edge.source not in notes and edge.target not in notes:
            edges.append(edge)

    environment = _parse_variables(wf.get("environment_variables"), "environment", problems)
    conversation = _parse_variables(wf.get("conversation_variables"), "conversation", problems)
    workflow = Workflow(
        name=name,
        mode=mode,
        version=version,
        nodes=nodes,
        edges=tuple(edges),
        environment=environment,
        conversation=conversation,
        extra={"kind": kind},
    )
    return workflow, problems


# --- nodes and edges ------------------------------------------------------------------------


def _as_id(value: Any) -> str | None:
    """Node ids are strings; unquoted numeric ids in hand-written YAML are read as text."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        text = str(value)
        return text or None
    return None


def _parse_node(
    raw: Any, index: int, problems: list[Problem]
) -> tuple[Node | None, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        problems.append(Problem(f"graph node #{index} is not a mapping"))
        return None, ()
    node_id = _as_id(raw.get("id"))
    data = raw.get("data")
    title = str(data.get("title") or raw.get("title") or "") if isinstance(data, Mapping) else ""
    if node_id is None:
        problems.append(Problem(f"graph node #{index} has no id", None, title or None))
        return None, ()
    if not isinstance(data, Mapping):
        problems.append(Problem("node has no 'data' mapping", node_id, title))
        return None, ()
    node_type = data.get("type")
    if not isinstance(node_type, str) or not node_type:
        problems.append(Problem("node has no 'data.type'", node_id, title))
        return None, ()

    def report(message: str) -> None:
        problems.append(Problem(message, node_id, title))

    error_strategy = data.get("error_strategy") or None
    if error_strategy is not None and error_strategy not in ERROR_STRATEGIES:
        report(
            f"error_strategy must be 'fail-branch', 'default-value' or empty, "
            f"got {error_strategy!r}"
        )
        error_strategy = None
    retry = _parse_retry(data.get("retry_config"), report)
    if node_type not in RETRYABLE_NODE_TYPES:
        retry = RetryConfig()  # Dify only retries the node kinds that call out or run code
    extension = data.get("fanflow")
    if isinstance(extension, Mapping) and extension.get("retry") is not None:
        retry = _parse_fanflow_retry(extension["retry"], report)
    node = Node(
        id=node_id,
        type=node_type,
        title=title,
        data=data,
        error_strategy=error_strategy,
        default_values=_parse_default_values(data.get("default_value"), report),
        retry=retry,
    )
    return node, _owner_candidates(raw, data, node_id, report)


def _owner_candidates(
    raw: Mapping[str, Any], data: Mapping[str, Any], node_id: str, report: Callable[[str], None]
) -> tuple[str, ...]:
    """Containers a node claims to sit in: `parentId`, else `iteration_id` / `loop_id`.

    graphon's newer `data.container_id` wins over both when present.
    """
    for field, value in (
        ("data.container_id", data.get("container_id")),
        ("parentId", raw.get("parentId")),
    ):
        if value is not None and value != "":
            owner = _as_id(value)
            if owner is None:
                report(f"{field} must be a node id, got {value!r}")
                return ()
            return (owner,) if owner != node_id else ()
    found: list[str] = []
    for field in ("iteration_id", "loop_id"):
        value = data.get(field)
        if value is None or value == "":
            continue
        owner = _as_id(value)
        if owner is None:
            report(f"data.{field} must be a node id, got {value!r}")
        elif owner != node_id and owner not in found:
            found.append(owner)
    return tuple(found)


def _resolve_parents(
    owners: Mapping[str, tuple[str, ...]], problems: list[Problem], nodes: Mapping[str, Node]
) -> dict[str, str]:
    """The direct container of each node; with both iteration_id and loop_id, the inner one."""

    def encloses(outer: str, inner: str) -> bool:
        seen: set[str] = set()
        pending = [inner]
        while pending:
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            for owner in owners.get(current, ()):
                if owner == outer:
                    return True
                pending.append(owner)
        return False

    parents: dict[str, str] = {}
    for node_id, candidates in owners.items():
        if len(candidates) == 1:
            parents[node_id] = candidates[0]
        elif len(candidates) == 2:
            first, second = candidates
            if encloses(second, first) != encloses(first, second):
                parents[node_id] = first if encloses(second, first) else second
            else:
                node = nodes[node_id]
                problems.append(
                    Problem(
                        f"cannot tell whether iteration {first!r} or loop {second!r} "
                        "directly contains this node",
                        node_id,
                        node.title,
                    )
                )
    return parents


def _parse_edge(raw: Any, index: int, problems: list[Problem]) -> Edge | None:
    if not isinstance(raw, Mapping):
        problems.append(Problem(f"graph edge #{index} is not a mapping"))
        return None
    source, target = _as_id(raw.get("source")), _as_id(raw.get("target"))
    if source is None or target is None:
        problems.append(Problem(f"graph edge #{index} needs a source and a target node id"))
        return None
    handle = raw.get("sourceHandle")
    handle = "source" if handle is None or handle == "" else str(handle)
    edge_id = raw.get("id")
    edge_id = str(edge_id) if edge_id not in (None, "") else f"{source}-{handle}-{target}"
    return Edge(id=edge_id, source=source, target=target, source_handle=handle)


# --- node fields ----------------------------------------------------------------------------


def _whole_number(value: Any) -> int | None:
    """An int from an int, an integral float or a numeric string (real exports hold all three)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return int(number) if number.is_integer() else None
    return None


def _parse_retry(raw: Any, report: Callable[[str], None]) -> RetryConfig:
    if raw is None:
        return RetryConfig()
    if not isinstance(raw, Mapping):
        report(f"retry_config must be a mapping, got {type(raw).__name__}")
        return RetryConfig()
    numbers: dict[str, int] = {}
    for field in ("max_retries", "retry_interval"):
        value = raw.get(field)
        if value is None:
            numbers[field] = 0
            continue
        number = _whole_number(value)
        if number is None or number < 0:
            report(f"retry_config.{field} must be a whole number >= 0, got {value!r}")
            number = 0
        numbers[field] = number
    enabled = raw.get("retry_enabled")
    if isinstance(enabled, str):
        enabled = enabled.strip().lower() == "true"
    if not enabled:
        return RetryConfig(max_retries=0, retry_interval_ms=numbers["retry_interval"])
    return RetryConfig(
        max_retries=numbers["max_retries"], retry_interval_ms=numbers["retry_interval"]
    )


#: failure kinds a `fanflow.retry.on` list may name -> `TaskResult.reason`
RETRY_ON_NAMES = {
    "timeout": "timeout",
    "connect": "connect",
    "5xx": "status_5xx",
    "429": "status_429",
    "4xx": "status_4xx",
    "format": "format",
    "breaker_open": "breaker_open",
    "error": "error",
}


def _parse_fanflow_retry(raw: Any, report: Callable[[str], None]) -> RetryConfig:
    """`fanflow: {retry: {max_retries, initial_interval_ms, multiplier, max_interval_ms,
    jitter, on: [timeout, 5xx, 429, format, connect, 4xx, breaker_open, error]}}`."""
    if not isinstance(raw, Mapping):
        report(f"fanflow.retry must be a mapping, got {type(raw).__name__}")
        return RetryConfig()
    numbers: dict[str, float] = {}
    for field, default in (
        ("max_retries", 3),
        ("initial_interval_ms", 1000),
        ("multiplier", 2),
        ("max_interval_ms", 60_000),
    ):
        value = raw.get(field, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            report(f"fanflow.retry.{field} must be a number >= 0, got {value!r}")
            value = default
        numbers[field] = value
    retry_on: frozenset[str] | None = None
    # YAML 1.1 reads a bare `on:` key as the boolean true
    names = raw.get("on", raw.get(True, raw.get("retry_on")))
    if names is not None:
        if not isinstance(names, list) or any(n not in RETRY_ON_NAMES for n in map(str, names)):
            report(f"fanflow.retry.on must be a list of {', '.join(RETRY_ON_NAMES)}, got {names!r}")
        else:
            retry_on = frozenset(RETRY_ON_NAMES[str(n)] for n in names)
    return RetryConfig(
        max_retries=int(numbers["max_retries"]),
        retry_interval_ms=int(numbers["initial_interval_ms"]),
        multiplier=float(numbers["multiplier"]),
        max_interval_ms=int(numbers["max_interval_ms"]),
        jitter=bool(raw.get("jitter", True)),
        retry_on=retry_on,
        extended=True,
    )


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
}


def _decode_default(key: str, value_type: str, value: Any) -> tuple[Any, str | None]:
    """Decode a default value; string values of non-string types hold JSON."""
    if value_type == "string" or value_type.startswith("array[file"):
        return value, None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None, f"default_value {key!r} of type {value_type} is not valid JSON"
    if value is None:
        return None, None
    expected = (list,) if value_type.startswith("array") else _JSON_TYPES.get(value_type)
    wrong = expected is not None and (
        not isinstance(value, expected) or (bool not in expected and isinstance(value, bool))
    )
    if wrong:
        return None, f"default_value {key!r} is not a {value_type}: {value!r}"
    return value, None


def _parse_default_values(raw: Any, report: Callable[[str], None]) -> tuple[DefaultValue, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        report("default_value must be a list of {key, type, value}")
        return ()
    values: list[DefaultValue] = []
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
            report(f"default_value entry must be a mapping with a 'key', got {item!r}")
            continue
        value_type = str(item.get("type") or "string")
        value, problem = _decode_default(item["key"], value_type, item.get("value"))
        if problem:
            report(problem)
            continue
        values.append(DefaultValue(key=item["key"], type=value_type, value=value))
    return tuple(values)


def _parse_variables(
    raw: Any, what: str, problems: list[Problem]
) -> tuple[EnvironmentVariable, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(Problem(f"{what} variables must be a list"))
        return ()
    result: list[EnvironmentVariable] = []
    for item in raw:
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not name:
            problems.append(Problem(f"{what} variable without a name: {item!r}"))
            continue
        value_type = str(item.get("value_type") or "string")
        result.append(
            EnvironmentVariable(name=name, value_type=value_type, value=item.get("value"))
        )
    return tuple(result)
