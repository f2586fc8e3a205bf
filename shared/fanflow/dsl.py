"""Load a Dify export (YAML DSL) into a `Workflow`, reporting every problem at once.

Three document shapes are read:

- an app export: `kind: app` (or no kind but an `app:` section), `app: {name, mode}`,
  `workflow: {graph, environment_variables, conversation_variables}`;
- a graphon graph document: `kind: graph` with `graph` (or `graph_config`) holding
  `{nodes, edges}`; it has no mode and no declared start inputs (graphon puts every start
  input at both `[start_id, name]` and `[sys, name]`), so of its references only the
  order is checked (see `fanflow.validate`);
- a bare `{nodes, edges}` graph (Dify's builder fixtures), read like a graph document.

Loaded documents carry `extra["kind"]` = "app" or "graph". Chatflows (`advanced-chat`) load
as plain graphs; other app modes are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from fanflow.errors import Problem, WorkflowInvalid
from fanflow.validate import validate_workflow
from fanflow.workflow import (
    RETRYABLE_NODE_TYPES,
    DefaultValue,
    Edge,
    EnvironmentVariable,
    Node,
    RetryConfig,
    Workflow,
)

__all__ = [
    "MAX_DSL_VERSION",
    "check_file",
    "load_workflow",
    "parse_workflow",
    "validate_workflow",
]

#: Newest DSL major.minor read; any patch level of it is accepted.
MAX_DSL_VERSION = (0, 6)
WORKFLOW_MODES = frozenset({"workflow", "advanced-chat"})
ERROR_STRATEGIES = frozenset({"fail-branch", "default-value"})

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")


def load_workflow(source: str | Path, *, text: str | None = None) -> Workflow:
    """Read, parse and validate a workflow file.

    `text`, when given, is the document itself and `source` only names it in messages.
    Raises `WorkflowInvalid` listing every problem found (parse and validation).
    """
    label = str(source)
    if text is None:
        text = _read(Path(source))
    workflow, problems = _parse(text, label=label)
    if workflow is not None:
        problems.extend(validate_workflow(workflow))
    if problems:
        raise WorkflowInvalid(problems, source=label)
    assert workflow is not None
    return workflow


def parse_workflow(text: str, *, source: str | None = None) -> Workflow:
    """Parse a document into a `Workflow` without the graph validation.

    Raises `WorkflowInvalid` when the document itself is malformed.
    """
    workflow, problems = _parse(text, label=source)
    if problems or workflow is None:
        raise WorkflowInvalid(problems, source=source)
    return workflow


def check_file(path: str | Path) -> list[Problem]:
    """Every problem of a workflow file (empty when it loads); what `fanflow validate` prints."""
    try:
        load_workflow(path)
    except WorkflowInvalid as exc:
        return exc.problems
    return []


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowInvalid([Problem(f"cannot read file: {exc}")], source=str(path)) from exc


# --- document level -------------------------------------------------------------------------


def _parse(text: str, *, label: str | None) -> tuple[Workflow | None, list[Problem]]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [Problem(f"not valid YAML: {exc}")]
    if not isinstance(document, Mapping):
        return None, [Problem("not a Dify app export: the document is not a mapping")]

    kind = document.get("kind")
    if kind == "graph":
        graph = _graph_of_graph_document(document)
        if graph is None:
            return None, [Problem("graph document has no 'graph' mapping with nodes and edges")]
        name = Path(label).stem if label else "graph"
        return _build(graph, name=name, mode="workflow", version="0.1.0", kind="graph", wf={})
    if kind is None and "app" not in document and _is_bare_graph(document):
        name = Path(label).stem if label else "graph"
        return _build(document, name=name, mode="workflow", version="0.1.0", kind="graph", wf={})
    if kind not in (None, "app"):
        return None, [Problem(f"not a Dify app export: kind {kind!r} (expected 'app')")]
    app = document.get("app")
    if not isinstance(app, Mapping):
        return None, [Problem("not a Dify app export: no 'app' section")]

    problems: list[Problem] = []
    version = str(document.get("version") or "0.1.0")
    problems.extend(_check_version(version))
    mode = app.get("mode")
    if mode not in WORKFLOW_MODES:
        return None, [*problems, Problem(f"app mode {mode!r} is not a workflow")]
    wf = document.get("workflow")
    graph = wf.get("graph") if isinstance(wf, Mapping) else None
    if not isinstance(wf, Mapping) or not isinstance(graph, Mapping):
        return None, [*problems, Problem("app export has no 'workflow.graph' mapping")]
    app_name = app.get("name")
    workflow, more = _build(
        graph,
        name=str(app_name) if app_name is not None else "",
        mode=str(mode),
        version=version,
        kind="app",
        wf=wf,
    )
    return workflow, problems + more


def _graph_of_graph_document(document: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for candidate in (document.get("graph_config"), document.get("graph")):
        if isinstance(candidate, Mapping):
            return candidate
    wf = document.get("workflow")
    if isinstance(wf, Mapping) and isinstance(wf.get("graph"), Mapping):
        return wf["graph"]
    return None


def _is_bare_graph(document: Mapping[str, Any]) -> bool:
    """Top-level nodes/edges whose nodes look like engine nodes (a `data` mapping with a type)."""
    nodes = document.get("nodes")
    if not isinstance(nodes, list) or not nodes or not isinstance(document.get("edges"), list):
        return False
    return all(
        isinstance(node, Mapping)
        and isinstance(node.get("data"), Mapping)
        and isinstance(node["data"].get("type"), str)
        for node in nodes
    )


def _check_version(version: str) -> list[Problem]:
    match = _VERSION.match(version)
    if match is None:
        return [Problem(f"DSL version {version!r} is not a version like '0.3.1'")]
    major, minor = int(match.group(1)), int(match.group(2))
    if (major, minor) > MAX_DSL_VERSION:
        newest = ".".join(map(str, MAX_DSL_VERSION))
        return [Problem(f"DSL version {version!r} is newer than supported (up to {newest}.x)")]
    return []


def _build(
    graph: Mapping[str, Any],
    *,
    name: str,
    mode: str,
    version: str,
    kind: str,
    wf: Mapping[str, Any],
) -> tuple[Workflow | None, list[Problem]]:
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
