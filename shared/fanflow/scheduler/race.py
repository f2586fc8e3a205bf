"""`fanflow: {join: race}`: a node with several incoming branches starts with the first
branch that finishes; the other branches are cancelled.

Dify starts a node once every incoming branch is resolved. A race node starts as soon as
one incoming edge is taken. Its ancestors in the same scope that are still running then
end `stopped` (their tasks are cancelled on the workers: `CancelTask`), those not started
are skipped, and their outgoing edges are skipped. A running iteration or loop among them
is dropped with its items or rounds. Late results of the losers are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fanflow.messages import task_id_for
from fanflow.scheduler.protocol import CancelTask
from fanflow.scheduler.state import (
    NODE_RUNNING,
    NODE_SKIPPED,
    SKIPPED,
    TAKEN,
    NodeRecord,
    Scope,
    frame_key,
)
from fanflow.vocabulary import NodeStatus
from fanflow.workflow import Node, Workflow

if TYPE_CHECKING:
    from fanflow.scheduler.scheduler import _Step

JOINS = ("all", "race")


def _join(data: Mapping[str, Any]) -> Any:
    extension = data.get("fanflow")
    return extension.get("join", "all") if isinstance(extension, Mapping) else "all"


def is_race(node: Node) -> bool:
    return bool(_join(node.data) == "race")


def readiness(states: Sequence[str | None]) -> bool | None:
    """A race node: ready at its first taken edge; skipped when every edge is skipped."""
    if any(s == TAKEN for s in states):
        return True
    if any(s is None for s in states):
        return None
    return False


def problems(workflow: Workflow) -> list[tuple[Node, str]]:
    """(node, message) for a bad `fanflow.join`."""
    found: list[tuple[Node, str]] = []
    for node in workflow.nodes.values():
        join = _join(node.data)
        if join not in JOINS:
            found.append((node, f"fanflow.join must be one of {', '.join(JOINS)}, got {join!r}"))
        elif join == "race" and len(workflow.in_edges.get(node.id, ())) < 2:
            found.append((node, "fanflow.join race needs at least two incoming edges"))
    return found


def _ancestors(workflow: Workflow, node_id: str) -> list[str]:
    seen: list[str] = []
    pending = [edge.source for edge in workflow.in_edges.get(node_id, ())]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.append(current)
        pending.extend(edge.source for edge in workflow.in_edges.get(current, ()))
    return seen


def cancel_losers(step: _Step, scope: Scope, winner: Node) -> None:
    """Stop the race node's ancestors that are still running, skip those not started."""
    from fanflow.scheduler import containers, redrive

    workflow, state = step.workflow, step.state
    cancelled: list[str] = []
    for node_id in _ancestors(workflow, winner.id):
        node = workflow.nodes[node_id]
        record = scope.nodes.get(node_id)
        if record is None:
            scope.nodes[node_id] = NodeRecord(status=NODE_SKIPPED)
        elif record.status == NODE_RUNNING:
            record.status = NodeStatus.STOPPED
            if node.is_task:
                task_id = task_id_for(state.run_id, node_id, scope.key, record.attempt)
                cancelled.append(task_id + redrive.task_suffix(state))
            elif node.is_container:
                key = frame_key(scope.key, node_id)
                state.iterations.pop(key, None)
                state.loops.pop(key, None)
                for child in [
                    s.key
                    for s in state.scopes.values()
                    if s.parent == scope.key and s.container == node_id
                ]:
                    containers.drop_scope(step, child)
            step.emit(
                "node_finished",
                scope,
                node,
                status=NodeStatus.STOPPED,
                error=f"cancelled: {winner.label()} started with another branch (join: race)",
            )
        else:
            continue
        for edge in workflow.out_edges.get(node_id, ()):
            scope.edges.setdefault(edge.id, SKIPPED)
    if cancelled:
        step.out.append(CancelTask(state.run_id, tuple(cancelled)))
