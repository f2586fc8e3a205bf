"""Redrive: restart a failed or stopped run from its failed nodes (as Step Functions'
Redrive does for a Map run).

Succeeded nodes of the top level keep their outputs and do not run again; a failed or
stopped node runs again, then what depends on it. A failed or stopped iteration of the top
level runs again without its items that the item store still holds (the shell reads
their indexes, `iterations_to_redrive`): only its failed (and never started) items are
dispatched, and its output is every item's, in order. A loop, or an iteration inside an
item or a round, runs again from its start.

A redrive's tasks have ids of their own (`~r<n>`), so results of the earlier attempt,
late or deduplicated, are not taken for the new ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from fanflow.scheduler.protocol import DEADLINE_TIMER, Emit, StartTimer
from fanflow.scheduler.state import (
    FAILED,
    NODE_FAILED,
    RUNNING,
    STOPPED,
    RunState,
    frame_key,
)
from fanflow.vocabulary import NodeStatus
from fanflow.workflow import Workflow

if TYPE_CHECKING:
    from fanflow.scheduler.scheduler import _Step

REDRIVABLE = frozenset({FAILED, STOPPED})
_RERUN = frozenset({NODE_FAILED, NodeStatus.STOPPED, NodeStatus.RUNNING})


class NotRedrivable(ValueError):
    """The run is not failed or stopped (or is a chatflow turn)."""


def iterations_to_redrive(workflow: Workflow, state: RunState) -> list[str]:
    """Item store keys of the top-level iterations a redrive runs again."""
    root = state.scopes.get("")
    if root is None:
        return []
    return [
        frame_key("", node_id)
        for node_id, record in root.nodes.items()
        if record.status in _RERUN
        and workflow.nodes[node_id].type == "iteration"
        and not _lost_race(workflow, root.edges, node_id)
    ]


def _lost_race(workflow: Workflow, edges: Mapping[str, str], node_id: str) -> bool:
    """A node stopped by a race join (`race`): its outgoing edges were skipped then."""
    out = workflow.out_edges.get(node_id, ())
    return bool(out) and all(edge.id in edges for edge in out)


def task_suffix(state: RunState) -> str:
    """Appended to task ids of the run's `redrives`-th redrive."""
    return f"~r{state.redrives}" if state.redrives else ""


def redrive(step: _Step, done_items: Mapping[str, Iterable[int]]) -> None:
    state = step.state
    if state.status not in REDRIVABLE:
        raise NotRedrivable(f"run {state.run_id} is {state.status}: only failed or stopped runs")
    if step.workflow.mode != "workflow":
        raise NotRedrivable(f"run {state.run_id} is a chatflow turn: only workflow runs")
    state.status = RUNNING
    state.error = None
    state.outputs = {}
    state.redrives += 1
    # item and round scopes, iteration and loop frames: rebuilt by the nodes that run again
    for key in [key for key in state.scopes if key]:
        del state.scopes[key]
    state.iterations.clear()
    state.loops.clear()
    root = state.scopes[""]
    root.failure = None
    rerun = [
        node_id
        for node_id, record in root.nodes.items()
        if record.status in _RERUN and not _lost_race(step.workflow, root.edges, node_id)
    ]
    for node_id in rerun:
        del root.nodes[node_id]
    state.redrive_skip = {key: sorted(set(indexes)) for key, indexes in done_items.items()}
    step.out.append(Emit("workflow_redriven", {"redrive_count": state.redrives, "nodes": rerun}))
    if step.scheduler.limits.max_run_seconds:
        limit_ms = int(step.scheduler.limits.max_run_seconds * 1000)
        step.out.append(StartTimer(DEADLINE_TIMER, limit_ms))
    step.mark_dirty("")
