"""Redrive in the pure scheduler: only failed items run again, stale results are ignored,
only failed or stopped runs qualify."""

from __future__ import annotations

from typing import Any

import pytest

from fanflow.dsl.load import parse_workflow
from fanflow.kernel import MemoryItems, start_run
from fanflow.messages import NodeTask, TaskResult
from fanflow.runtime import RunSetup
from fanflow.scheduler import (
    CollectItems,
    Command,
    DispatchTask,
    ItemsCollected,
    RecordItem,
    RunFinished,
    RunState,
    Scheduler,
    TaskFinished,
    dump_state,
    load_state,
)
from fanflow.scheduler.redrive import NotRedrivable
from tests.lifecycle.test_tolerance import PURE
from tests.scheduler.harness import fake_execute


class Run:
    def __init__(self, fail: list[int], count: int = 40) -> None:
        workflow = parse_workflow(PURE.replace("FANFLOW", "{}").replace("FAIL", str(fail)))
        self.scheduler = Scheduler(workflow)
        self.items = MemoryItems()
        self.dispatched: list[NodeTask] = []
        setup = RunSetup(inputs={"items": list(range(count))}, system={"user_id": "u"})
        self.state, commands = start_run(self.scheduler, "r", setup)
        self.finished: RunFinished | None = None
        self.fail: set[int] = set(fail)
        self.carry_out(commands)

    def carry_out(self, commands: list[Command]) -> None:
        pending = list(commands)
        while pending:
            command = pending.pop(0)
            events: list[Any] = []
            if isinstance(command, DispatchTask):
                task = command.task
                self.dispatched.append(task)
                data = {**task.data, "fail_items": sorted(self.fail)}
                events.append(TaskFinished(fake_execute(task.model_copy(update={"data": data}))))
            elif isinstance(command, RecordItem):
                self.items.record(command)
            elif isinstance(command, CollectItems):
                events.append(
                    ItemsCollected(command.iteration, self.items.collect(command.iteration))
                )
            elif isinstance(command, RunFinished):
                self.finished = command
            for event in events:
                self.state = load_state(dump_state(self.state))  # as a durable shell stores it
                pending.extend(self.scheduler.advance(self.state, event))


def _items_of(tasks: list[NodeTask]) -> list[int]:
    return sorted(t.variables["each.item"] for t in tasks)


def test_only_the_failed_items_run_again_and_every_output_is_kept_in_order() -> None:
    run = Run(fail=[3, 5])
    assert run.finished is not None and run.finished.status == "failed"
    first = _items_of(run.dispatched)
    before = dict(run.items._items)  # what the item store holds
    run.fail = set()
    keys = run.scheduler.redrive_iterations(run.state)
    assert keys == ["|each"]
    done = {key: sorted(before.get(key, {})) for key in keys}
    run.dispatched.clear()
    run.finished = None
    run.carry_out(run.scheduler.redrive(run.state, done))
    assert run.finished is not None and run.finished.status == "succeeded"
    # the items that succeeded before are not dispatched again; the failed ones and the
    # ones never started are
    ran_before = done["|each"]
    assert 3 not in ran_before and 5 not in ran_before and len(ran_before) >= 8
    assert _items_of(run.dispatched) == sorted(set(range(40)) - set(ran_before))
    assert all(t.task_id.endswith("~r1") and t.generation == 1 for t in run.dispatched)
    assert set(first) - {3, 5} == set(ran_before)
    clean = Run(fail=[])
    assert clean.finished is not None
    assert run.finished.outputs == clean.finished.outputs  # all 40, in item order
    assert run.state.redrives == 1


def test_a_result_of_the_attempt_before_the_redrive_is_ignored() -> None:
    run = Run(fail=[0], count=1)
    assert run.finished is not None and run.finished.status == "failed"
    (old,) = run.dispatched
    run.fail = set()
    run.dispatched.clear()
    run.finished = None
    commands = run.scheduler.redrive(run.state, {"|each": []})
    (new,) = [c.task for c in commands if isinstance(c, DispatchTask)]
    assert new.task_id == old.task_id + "~r1"
    stale = TaskResult(
        task_id=old.task_id,
        run_id="r",
        node_id=old.node_id,
        scope=old.scope,
        attempt=0,
        status="failed",
        error="late failure of the first attempt",
    )
    assert run.scheduler.advance(run.state, TaskFinished(stale)) == []
    assert run.state.status == "running"


def test_only_failed_or_stopped_runs_are_redriven() -> None:
    run = Run(fail=[])
    assert run.finished is not None and run.finished.status == "succeeded"
    state: RunState = run.state
    with pytest.raises(NotRedrivable, match="only failed or stopped"):
        run.scheduler.redrive(state, {})
