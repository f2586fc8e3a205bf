"""A simulated transport for the pure scheduler: deterministic fake tasks, any delivery order."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fanflow.kernel import MemoryItems, start_run
from fanflow.messages import NodeTask, TaskResult
from fanflow.runtime import RunSetup
from fanflow.scheduler import (
    CollectItems,
    DispatchTask,
    Emit,
    Event,
    ItemsCollected,
    Limits,
    RecordItem,
    RunFinished,
    RunState,
    Scheduler,
    TaskFinished,
)
from fanflow.workflow import Workflow


def fake_execute(task: NodeTask) -> TaskResult:
    """A deterministic stand-in for a worker: outputs depend only on the task's inputs.

    `data.fail_attempts`: attempts below it fail; `data.fail_items`: the item values for
    which every attempt fails.
    """
    values = {key: task.variables[key] for key in sorted(task.variables)}
    item = next((v for k, v in values.items() if k.endswith(".item")), None)
    failing = task.attempt < int(task.data.get("fail_attempts", 0)) or (
        item is not None and item in task.data.get("fail_items", ())
    )
    base = dict(
        task_id=task.task_id,
        run_id=task.run_id,
        node_id=task.node_id,
        scope=task.scope,
        attempt=task.attempt,
    )
    if failing:
        return TaskResult(
            **base, status="failed", error=f"{task.node_id} failed", error_type="Fake"
        )
    digest = hashlib.sha256(json.dumps([task.node_id, values], sort_keys=True).encode()).digest()
    out = int.from_bytes(digest[:2], "big") % 1000
    size = int(task.data.get("emit_items", 0))
    return TaskResult(
        **base, status="succeeded", outputs={"out": out, "items": [out + i for i in range(size)]}
    )


@dataclass
class Trace:
    status: str
    outputs: dict[str, Any]
    error: str | None
    finished_nodes: list[tuple[str, str]] = field(default_factory=list)
    max_scopes: int = 0
    steps: int = 0


Chooser = Callable[[int], int]
Duplicator = Callable[[], bool]


def simulate(
    workflow: Workflow,
    *,
    inputs: dict[str, Any] | None = None,
    choose: Chooser = lambda n: 0,
    duplicate: Duplicator = lambda: False,
    limits: Limits | None = None,
    max_events: int = 20_000,
) -> Trace:
    """Run to the end, delivering pending events in the order `choose` picks.

    `duplicate()` true re-queues a copy of the delivered event, as an at-least-once broker
    may. Every state is round-tripped through JSON, as a durable shell would store it.
    """
    from fanflow.scheduler import dump_state, load_state

    scheduler = Scheduler(workflow, limits=limits or Limits())
    pending: list[Event] = []
    items = MemoryItems()
    finished: list[RunFinished] = []
    nodes_done: list[tuple[str, str]] = []
    trace_max_scopes = 0

    def carry_out(commands: list[Any]) -> None:
        for command in commands:
            if isinstance(command, DispatchTask):
                pending.append(TaskFinished(fake_execute(command.task)))
            elif isinstance(command, RecordItem):
                items.record(command)
            elif isinstance(command, CollectItems):
                # answered later, in any order among the other pending events
                pending.append(ItemsCollected(command.iteration, items.collect(command.iteration)))
            elif isinstance(command, Emit) and command.event == "node_finished":
                nodes_done.append((command.data["scope"], command.data["node_id"]))
            elif isinstance(command, RunFinished):
                finished.append(command)

    setup = RunSetup(inputs=dict(inputs or {}), system={"user_id": "u"})
    state, commands = start_run(scheduler, "run-1", setup)
    carry_out(commands)
    events = 0
    while pending and events < max_events:
        events += 1
        event = pending.pop(choose(len(pending)) % len(pending))
        if duplicate():
            pending.append(event)
        state = load_state(dump_state(state))
        state, commands = scheduler.step(state, event)
        trace_max_scopes = max(trace_max_scopes, len(state.scopes))
        carry_out(commands)
    assert len(finished) == 1, f"run finished {len(finished)} times; state {state.status}"
    final: RunState = state
    return Trace(
        status=finished[0].status,
        outputs=finished[0].outputs,
        error=finished[0].error,
        finished_nodes=nodes_done,
        max_scopes=trace_max_scopes,
        steps=final.steps,
    )
