"""Load a Dify export (YAML DSL) into a `Workflow`, reporting every problem at once.

Three document shapes are read:

- an app export: `kind: app` (or no kind but an `app:` section), `app: {name, mode}`,
  `workflow: {graph, environment_variables, conversation_variables}`;
- a graphon graph document: `kind: graph` with `graph` (or `graph_config`) holding
  `{nodes, edges}`; it has no mode and no declared start inputs (graphon puts every start
  input at both `[start_id, name]` and `[sys, name]`), so of its references only the
  order is checked (see `fanflow.dsl.validate`);
- a bare `{nodes, edges}` graph (Dify's builder fixtures), read like a graph document.

Loaded documents carry `extra["kind"]` = "app" or "graph". Chatflows (`advanced-chat`) load
as plain graphs; other app modes are refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fanflow.dsl.graph import ERROR_STRATEGIES as ERROR_STRATEGIES
from fanflow.dsl.graph import build_workflow
from fanflow.dsl.limits import DslLimits
from fanflow.dsl.validate import validate_workflow
from fanflow.dsl.yaml_bounded import load_bounded
from fanflow.errors import Problem, WorkflowInvalid
from fanflow.workflow import Workflow

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

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")


def load_workflow(
    source: str | Path, *, text: str | None = None, limits: DslLimits | None = None
) -> Workflow:
    """Read, parse and validate a workflow file.

    `text`, when given, is the document itself and `source` only names it in messages.
    Raises `WorkflowInvalid` listing every problem found (parse and validation). YAML is
    always read within `fanflow.dsl.yaml_bounded`'s bounds (alias bombs, recursive
    anchors); `limits` bound the file's size and the graph's, checked before building it.
    """
    label = str(source)
    if text is None:
        text = _read(Path(source))
    if limits is not None and (too_large := limits.text_problem(text)) is not None:
        raise WorkflowInvalid([too_large], source=label)
    workflow, problems = _parse(text, label=label, limits=limits)
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


def _parse(
    text: str, *, label: str | None, limits: DslLimits | None = None
) -> tuple[Workflow | None, list[Problem]]:
    try:
        document = (
            load_bounded(text)
            if limits is None
            else load_bounded(text, max_nodes=limits.max_values)
        )
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
        if limits is not None and (too_large := limits.graph_problems(graph)):
            return None, too_large
        return build_workflow(
            graph, name=name, mode="workflow", version="0.1.0", kind="graph", wf={}
        )
    if kind is None and "app" not in document and _is_bare_graph(document):
        name = Path(label).stem if label else "graph"
        if limits is not None and (too_large := limits.graph_problems(document)):
            return None, too_large
        return build_workflow(
            document, name=name, mode="workflow", version="0.1.0", kind="graph", wf={}
        )
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
    if limits is not None and (too_large := limits.graph_problems(graph)):
        return None, [*problems, *too_large]
    app_name = app.get("name")
    workflow, more = build_workflow(
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
        graph: Mapping[str, Any] = wf["graph"]
        return graph
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
