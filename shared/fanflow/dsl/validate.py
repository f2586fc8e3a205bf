"""Check a loaded `Workflow` before it runs: structure, node fields and variable references.

Every check appends to one list, so a file's problems are reported together. The per-node-type
field checks live in `fanflow.dsl.checks`; `check_node_fields` is re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from graphlib import CycleError, TopologicalSorter

from fanflow.dsl.checks import check_node_fields
from fanflow.dsl.inputs import node_selectors
from fanflow.errors import Problem
from fanflow.registry import BODY_STARTS, SUPPORTED_NODE_TYPES
from fanflow.scheduler import race
from fanflow.variables import Selector, selector_key
from fanflow.workflow import Node, Workflow

__all__ = ["SYSTEM_VARIABLES", "check_node_fields", "node_selectors", "validate_workflow"]

#: System variables each app mode provides (`sys.<name>`).
_WORKFLOW_SYSTEM = frozenset(
    {"user_id", "app_id", "workflow_id", "workflow_run_id", "timestamp", "files"}
)
SYSTEM_VARIABLES: Mapping[str, frozenset[str]] = {
    "workflow": _WORKFLOW_SYSTEM,
    "advanced-chat": _WORKFLOW_SYSTEM | {"query", "conversation_id", "dialogue_count"},
}
_CONTAINER_START = BODY_STARTS
_STARTED_BY = {start: container for container, start in BODY_STARTS.items()}


def validate_workflow(workflow: Workflow) -> list[Problem]:
    """Every problem that would stop `workflow` from running as Dify runs it (empty: fine)."""
    problems: list[Problem] = []
    scopes = _scopes(workflow, problems)
    for node in workflow.nodes.values():
        if node.type not in SUPPORTED_NODE_TYPES:
            problems.append(_at(node, f"unsupported node type {node.type!r}"))
        else:
            problems.extend(_at(node, message) for message in check_node_fields(node))
    problems.extend(_at(node, message) for node, message in race.problems(workflow))
    _check_starts(workflow, scopes, problems)
    predecessors = _check_edges(workflow, scopes, problems)
    _check_cycles(workflow, scopes, predecessors, problems)
    _check_references(workflow, scopes, predecessors, problems)
    return problems


def _at(node: Node, message: str) -> Problem:
    return Problem(message, node.id, node.title or None)


# --- containers and start nodes -------------------------------------------------------------


def _scopes(workflow: Workflow, problems: list[Problem]) -> dict[str, tuple[str, ...]]:
    """Each node's enclosing containers, innermost first; a bad parent is reported and cut."""
    chains: dict[str, tuple[str, ...]] = {}
    for node in workflow.nodes.values():
        chain: list[str] = []
        current = node
        while current.parent_id is not None:
            parent = workflow.nodes.get(current.parent_id)
            if parent is None or not parent.is_container:
                if current is node:  # reported once, by the node that names the bad parent
                    problems.append(_at(node, _parent_problem(current.parent_id, parent)))
                break
            if parent.id == node.id:
                problems.append(_at(node, "containers enclose each other in a circle"))
                break
            if parent.id in chain:
                break
            chain.append(parent.id)
            current = parent
        chains[node.id] = tuple(chain)
    return chains


def _parent_problem(parent_id: str, parent: Node | None) -> str:
    if parent is None:
        return f"container {parent_id!r} does not exist"
    return f"parent {parent.label()} is a {parent.type!r} node, not an iteration or loop"


def _scope(scopes: Mapping[str, tuple[str, ...]], node_id: str) -> str | None:
    chain = scopes.get(node_id, ())
    return chain[0] if chain else None


def _check_starts(
    workflow: Workflow, scopes: Mapping[str, tuple[str, ...]], problems: list[Problem]
) -> None:
    starts = [node for node in workflow.nodes.values() if node.type == "start"]
    if not any(_scope(scopes, node.id) is None for node in starts):
        problems.append(Problem("the workflow has no start node"))
    for extra in starts[1:]:
        problems.append(_at(extra, f"more than one start node (first: {starts[0].label()})"))

    for node in workflow.nodes.values():
        container = workflow.nodes.get(_scope(scopes, node.id) or "")
        if node.type in _STARTED_BY:
            wanted = _STARTED_BY[node.type]
            if container is None or container.type != wanted:
                problems.append(_at(node, f"{node.type} node outside a {wanted}"))
        if not node.is_container:
            continue
        children = set(workflow.children.get(node.id, ()))
        start_id = node.data.get("start_node_id")
        entries = [c for c in children if workflow.nodes[c].type == _CONTAINER_START[node.type]]
        if start_id and start_id not in children:
            problems.append(
                _at(node, f"start_node_id {start_id!r} is not a node of this {node.type}")
            )
        elif not entries and not start_id:
            problems.append(_at(node, f"{node.type} has no {_CONTAINER_START[node.type]} node"))


# --- edges and cycles -----------------------------------------------------------------------


def _check_edges(
    workflow: Workflow, scopes: Mapping[str, tuple[str, ...]], problems: list[Problem]
) -> dict[str, set[str]]:
    """Report bad edges; return each node's predecessors through the edges that are sound."""
    predecessors: dict[str, set[str]] = {node_id: set() for node_id in workflow.nodes}
    for edge in workflow.edges:
        source, target = workflow.nodes.get(edge.source), workflow.nodes.get(edge.target)
        if source is None or target is None:
            for missing, present, word in (
                (edge.source, target, "from"),
                (edge.target, source, "to"),
            ):
                if missing not in workflow.nodes:
                    message = f"edge {edge.id!r} {word} missing node {missing!r}"
                    problems.append(_at(present, message) if present else Problem(message))
            continue
        outer, inner = _scope(scopes, source.id), _scope(scopes, target.id)
        if outer != inner:
            problems.append(
                _at(
                    source,
                    f"edge {edge.id!r} to {target.label()} crosses a container boundary "
                    f"({_scope_name(workflow, outer)} -> {_scope_name(workflow, inner)})",
                )
            )
            continue
        predecessors[target.id].add(source.id)
    return predecessors


def _scope_name(workflow: Workflow, container_id: str | None) -> str:
    if container_id is None:
        return "top level"
    return f"{workflow.nodes[container_id].type} {container_id}"


def _check_cycles(
    workflow: Workflow,
    scopes: Mapping[str, tuple[str, ...]],
    predecessors: Mapping[str, set[str]],
    problems: list[Problem],
) -> None:
    by_scope: dict[str | None, dict[str, set[str]]] = {}
    for node_id, before in predecessors.items():
        by_scope.setdefault(_scope(scopes, node_id), {})[node_id] = before
    for container_id, graph in by_scope.items():
        try:
            TopologicalSorter(graph).prepare()
        except CycleError as exc:
            cycle = exc.args[1]
            where = _scope_name(workflow, container_id)
            problems.append(
                _at(
                    workflow.nodes[cycle[0]],
                    f"cycle in the {where} graph: {' -> '.join(cycle)} "
                    "(only loop nodes repeat work)",
                )
            )


# --- variable references --------------------------------------------------------------------


def _check_references(
    workflow: Workflow,
    scopes: Mapping[str, tuple[str, ...]],
    predecessors: Mapping[str, set[str]],
    problems: list[Problem],
) -> None:
    """Report references that cannot resolve: unknown sys/env/conversation names, missing
    nodes, undeclared start inputs, and nodes that never run before the reader.

    Graph documents (`extra["kind"] == "graph"`) get only the last check: graphon declares
    no start inputs, maps every input to `sys.*` too, and its own fixtures reference
    missing variables on purpose to exercise run-time failures.
    """
    lenient = workflow.extra.get("kind", "app") == "graph"
    system = SYSTEM_VARIABLES.get(workflow.mode, SYSTEM_VARIABLES["workflow"])
    environment = {variable.name for variable in workflow.environment}
    conversation = {variable.name for variable in workflow.conversation}
    start_inputs = _start_inputs(workflow, scopes)
    successors: dict[str, set[str]] = {node_id: set() for node_id in predecessors}
    for node_id, before in predecessors.items():
        for source in before:
            successors[source].add(node_id)
    downstream_cache: dict[str, frozenset[str]] = {}

    def downstream(node_id: str) -> frozenset[str]:
        if node_id not in downstream_cache:
            seen: set[str] = set()
            pending = list(successors.get(node_id, ()))
            while pending:
                current = pending.pop()
                if current not in seen:
                    seen.add(current)
                    pending.extend(successors.get(current, ()))
            downstream_cache[node_id] = frozenset(seen)
        return downstream_cache[node_id]

    def runs_after(node: Node, target_id: str) -> bool:
        """True when `target_id` can never have run before `node` reads it.

        Compared in the innermost scope holding both (a node inside a container is
        represented by that container). Nodes on parallel branches are not ordered and pass:
        Dify imports such files and reads whatever the variable holds at run time.
        """
        target_chain = (target_id, *scopes.get(target_id, ()))
        for level in (node.id, *scopes.get(node.id, ())):
            level_scope = _scope(scopes, level)
            lifted = next((n for n in target_chain if _scope(scopes, n) == level_scope), None)
            if lifted is None:
                continue
            if lifted == level:
                return level == node.id and not node.is_container
            return lifted in downstream(level)
        return False

    for node in workflow.nodes.values():
        for selector in node_selectors(node):
            message = None
            if not lenient:
                message = _reference_problem(
                    workflow, selector, system, environment, conversation, start_inputs
                )
            if message is None and selector[0] in workflow.nodes and runs_after(node, selector[0]):
                target = workflow.nodes[selector[0]]
                message = (
                    f"reference {selector_key(selector)!r} to {target.label()}, "
                    "which never runs before this node"
                )
            if message:
                problems.append(_at(node, message))


def _start_inputs(workflow: Workflow, scopes: Mapping[str, tuple[str, ...]]) -> dict[str, set[str]]:
    inputs: dict[str, set[str]] = {}
    for node in workflow.nodes.values():
        if node.type == "start" and _scope(scopes, node.id) is None:
            variables = node.data.get("variables") or []
            inputs[node.id] = {
                item["variable"]
                for item in variables
                if isinstance(item, Mapping) and isinstance(item.get("variable"), str)
            }
    return inputs


def _reference_problem(
    workflow: Workflow,
    selector: Selector,
    system: frozenset[str],
    environment: set[str],
    conversation: set[str],
    start_inputs: Mapping[str, set[str]],
) -> str | None:
    head, name = selector[0], selector[1]
    shown = selector_key(selector)
    if head == "sys":
        return None if name in system else f"unknown system variable {shown!r}"
    if head == "env":
        return None if name in environment else f"undeclared environment variable {shown!r}"
    if head == "conversation":
        return None if name in conversation else f"undeclared conversation variable {shown!r}"
    target = workflow.nodes.get(head)
    if target is None:
        return f"reference {shown!r} to missing node {head!r}"
    if head in start_inputs and name not in start_inputs[head] and not name.startswith("sys."):
        return f"reference {shown!r} to undeclared start input {name!r}"
    return None
