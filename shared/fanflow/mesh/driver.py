"""Runs held in the store, advanced by the pure scheduler, one transaction per step batch.

Trigger (start, stop), aggregator (results, dead letters, deadlines) all go through here:
load state, `Scheduler.step`, record items and node executions, write the outbox, save —
all in the run's transaction. Publishing happens after commit (`fanflow.mesh.relay`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from fanflow.chat.turns import turn_end
from fanflow.dsl.load import load_workflow
from fanflow.kernel import settle_items, start_run
from fanflow.mesh.topology import HEADER_READY_AT, Topology
from fanflow.metrics import NODE_RETRIES, RUN_DURATION, RUNS_FINISHED, RUNS_STARTED
from fanflow.registry import TASK_NODE_TYPES
from fanflow.runtime import RunRequest, prepare_run
from fanflow.scheduler import (
    CancelTask,
    CancelTasks,
    Command,
    DispatchTask,
    Emit,
    Event,
    Limits,
    RunFinished,
    RunState,
    Scheduler,
    StartTimer,
    dump_state,
    load_state,
)
from fanflow.scheduler.redrive import REDRIVABLE, NotRedrivable
from fanflow.store import AppRecord, OutboxMessage, RunTransaction, Store
from fanflow.vocabulary import FINISHED_STATUSES, EventName, NodeStatus, OutboxKind
from fanflow.workflow import Workflow

KIND_TASK, KIND_EVENT, KIND_CONTROL = OutboxKind.TASK, OutboxKind.EVENT, OutboxKind.CONTROL
FINISHED = FINISHED_STATUSES
#: events written to the outbox (published even if this process dies right after commit):
#: the ones blocking calls and streams need to end. Every other event is progress, published
#: after commit without a row, lost on a crash (README: "Durable and best-effort events").
DURABLE_EVENTS = frozenset({EventName.WORKFLOW_STARTED, EventName.WORKFLOW_FINISHED})


class Committed(list[int]):
    """What a step committed: its outbox ids (a list), and every message to publish now, in
    order — the outbox rows as written (`(id, message)`, so nobody reads them back) and the
    best-effort events (`(None, message)`, no row)."""

    def __init__(self, messages: Sequence[tuple[int | None, OutboxMessage]] = ()) -> None:
        super().__init__(row_id for row_id, _ in messages if row_id is not None)
        self.messages: list[tuple[int | None, OutboxMessage]] = list(messages)


@dataclass(frozen=True)
class Envelope:
    """An event for one run, with the id of the message that carried it (for dedupe)."""

    event: Event
    message_id: str | None = None


def event_body(run_id: str, event: str, data: dict[str, Any], *, at: float) -> bytes:
    return json.dumps(
        {"run_id": run_id, "event": event, "data": data, "at": at}, ensure_ascii=False, default=str
    ).encode()


def control_body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


#: retry delays are rounded up to one of these (ms), so the broker holds few delay queues
DELAY_STEPS_MS = (
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 60_000,
    120_000, 300_000, 600_000, 1_200_000, 1_800_000, 3_600_000,
)  # fmt: skip


def delay_step_ms(delay_ms: int) -> int:
    """The smallest step not shorter than `delay_ms` (0 stays 0; beyond the last: the last)."""
    if delay_ms <= 0:
        return 0
    return next((step for step in DELAY_STEPS_MS if step >= delay_ms), DELAY_STEPS_MS[-1])


class WorkflowCache:
    """Parsed workflows per app; an app's DSL never changes after registration."""

    def __init__(self) -> None:
        self._by_app: dict[str, Workflow] = {}

    def __contains__(self, app_id: object) -> bool:
        return app_id in self._by_app

    def get(self, app: AppRecord) -> Workflow:
        workflow = self._by_app.get(app.id)
        if workflow is None:
            workflow = load_workflow(f"app {app.id}", text=app.dsl)
            self._by_app[app.id] = workflow
        return workflow


class RunDriver:
    """Starts runs and applies events to them, in the store, with the pure scheduler."""

    def __init__(self, store: Store, topology: Topology, *, limits: Limits) -> None:
        self.store = store
        self.topology = topology
        self.limits = limits
        self.workflows = WorkflowCache()

    async def start_run(
        self, app: AppRecord, run_id: str, request: RunRequest, *, max_running: int | None = None
    ) -> Committed:
        """Create the run and its first fan-out. Raises `InputsInvalid` before writing, and
        `AppBusy` when the app has `max_running` runs in progress (checked atomically)."""
        workflow = self.workflows.get(app)
        now = time.time()
        setup = prepare_run(workflow, _with_ids(request, app), run_id=run_id, now_s=now)
        scheduler = Scheduler(workflow, limits=self.limits)
        state, commands = start_run(scheduler, run_id, setup)
        async with self.store.creating_run(
            run_id,
            app.id,
            inputs=setup.inputs,
            state=dump_state(state),
            user=request.user,
            max_running=max_running,
        ) as tx:
            committed = await self._finish_step(tx, scheduler, state, commands, created_at=now)
        RUNS_STARTED.labels(workflow.mode).inc()
        return committed

    async def apply(self, app: AppRecord, run_id: str, envelopes: Sequence[Envelope]) -> Committed:
        """Apply events to a run in one transaction; returns what to publish after it."""
        scheduler = Scheduler(self.workflows.get(app), limits=self.limits)
        async with self.store.run_transaction(run_id) as tx:
            if tx.status in FINISHED:
                return Committed()  # late or duplicate messages of a finished run change nothing
            ids = [e.message_id for e in envelopes if e.message_id]
            seen = iter(await tx.seen_many(ids) if ids else ())
            state = load_state(tx.state())
            commands: list[Command] = []
            applied = 0
            for envelope in envelopes:
                if envelope.message_id and next(seen):
                    continue
                applied += 1
                # the state was just decoded for this transaction: advance it in place
                more = scheduler.advance(state, envelope.event)
                commands.extend(await settle_items(scheduler, state, more, tx))
            if not applied:
                return Committed()
            return await self._finish_step(tx, scheduler, state, commands)

    async def redrive(self, app: AppRecord, run_id: str) -> tuple[Committed, int]:
        """Restart a failed or stopped run from its failed nodes, in one transaction
        (`fanflow.scheduler.redrive`); what to publish, and the run's redrive count.
        Raises `NotRedrivable` (and `RunNotFound`)."""
        scheduler = Scheduler(self.workflows.get(app), limits=self.limits)
        async with self.store.run_transaction(run_id) as tx:
            if tx.status not in REDRIVABLE:
                raise NotRedrivable(f"run {run_id} is {tx.status}: only failed or stopped runs")
            state = load_state(tx.state())
            done = {key: await tx.item_indexes(key) for key in scheduler.redrive_iterations(state)}
            commands = scheduler.redrive(state, done)
            count = await tx.mark_redriven()
            return await self._finish_step(tx, scheduler, state, commands), count

    async def _finish_step(
        self,
        tx: RunTransaction,
        scheduler: Scheduler,
        state: RunState,
        commands: list[Command],
        *,
        created_at: float | None = None,
    ) -> Committed:
        commands = await settle_items(scheduler, state, commands, tx)
        now = time.time()
        # in command order; `durable` marks the ones that go through the outbox
        messages: list[OutboxMessage] = []
        durable: list[bool] = []
        finished: RunFinished | None = None
        for command in commands:
            if isinstance(command, DispatchTask):
                messages.append(self._task_message(command, now))
                durable.append(True)
                task = command.task
                # what the node reads, as the worker will see it (attempts so far)
                await tx.upsert_node_execution(
                    node_id=task.node_id,
                    node_type=task.node_type,
                    title=task.node_title,
                    scope=task.scope,
                    status=NodeStatus.RUNNING,
                    inputs=dict(task.variables),
                    attempts=task.attempt + 1,
                    started_at=now if task.attempt == 0 else None,
                )
            elif isinstance(command, Emit):
                messages.append(self._event_message(state.run_id, command, now))
                durable.append(command.event in DURABLE_EVENTS)
                await self._record_node(tx, command, now)
            elif isinstance(command, CancelTasks):
                messages.append(
                    OutboxMessage(
                        kind=KIND_CONTROL,
                        routing="",
                        # a redriven run's workers forget the stop of its earlier attempt
                        body=control_body(stop_run=command.run_id, generation=state.redrives),
                        message_id=f"stop:{command.run_id}:{state.redrives}",
                    )
                )
                durable.append(True)
            elif isinstance(command, CancelTask):  # a lost race's branches
                messages.append(
                    OutboxMessage(
                        kind=KIND_CONTROL,
                        routing="",
                        body=control_body(cancel_tasks=list(command.task_ids)),
                        message_id=f"cancel:{command.task_ids[0]}",
                    )
                )
                durable.append(True)
            elif isinstance(command, RunFinished):
                finished = command
            elif isinstance(command, StartTimer):
                pass  # the deadline is swept from the run's creation time (see aggregator)
        started = created_at if created_at is not None else tx.created_at
        await tx.save(
            dump_state(state),
            status=state.status,
            outputs=state.outputs if finished else None,
            error=state.error,
            total_steps=state.steps,
            total_tokens=state.total_tokens,
            exceptions_count=state.exceptions_count,
            finished_at=now if finished else None,
            elapsed_time=(now - started) if finished else None,
        )
        if finished is not None and scheduler.workflow.mode == "advanced-chat":
            await tx.finish_turn(turn_end(state, elapsed_time=now - started))
        if finished is not None:
            await tx.forget_scratch()
            RUNS_FINISHED.labels(finished.status).inc()
            RUN_DURATION.observe(now - started)
        rows = [m for m, keep in zip(messages, durable, strict=True) if keep]
        row_ids = iter(await tx.add_outbox(rows) if rows else ())
        return Committed(
            [
                (next(row_ids) if keep else None, m)
                for m, keep in zip(messages, durable, strict=True)
            ]
        )

    def _task_message(self, command: DispatchTask, now: float) -> OutboxMessage:
        task = command.task
        # a few delay values only: each one is a queue on the broker
        delay_ms = delay_step_ms(command.delay_ms)
        # when the task may start (after its retry delay): workers measure queue wait from it
        ready_at = now + delay_ms / 1000
        return OutboxMessage(
            kind=KIND_TASK,
            routing=self.topology.class_for(task.node_type),
            body=task.encode(),
            message_id=self.topology.task_message_id(task),
            headers={**self.topology.task_headers(task), HEADER_READY_AT: f"{ready_at:.6f}"},
            delay_ms=delay_ms,
        )

    @staticmethod
    def _event_message(run_id: str, emit: Emit, now: float) -> OutboxMessage:
        data = emit.data
        key = f"{data.get('scope', '')}/{data.get('node_id', '')}/{data.get('index', '')}"
        return OutboxMessage(
            kind=KIND_EVENT,
            routing=f"run.{run_id}.{emit.event}",
            body=event_body(run_id, emit.event, data, at=now),
            message_id=f"event:{run_id}:{emit.event}:{key}",
        )

    @staticmethod
    async def _record_node(tx: RunTransaction, emit: Emit, now: float) -> None:
        data = emit.data
        if emit.event == EventName.NODE_STARTED and data["node_type"] not in TASK_NODE_TYPES:
            # a task node's row is written with its dispatch, inputs included
            await tx.upsert_node_execution(
                node_id=data["node_id"],
                node_type=data["node_type"],
                title=data.get("title", ""),
                scope=data.get("scope", ""),
                status=NodeStatus.RUNNING,
                started_at=now,
            )
        elif emit.event == EventName.NODE_RETRY:
            NODE_RETRIES.labels(data["node_type"]).inc()
        elif emit.event == EventName.NODE_FINISHED:
            await tx.upsert_node_execution(
                node_id=data["node_id"],
                node_type=data["node_type"],
                title=data.get("title", ""),
                scope=data.get("scope", ""),
                status=data.get("status", NodeStatus.SUCCEEDED),
                outputs=data.get("outputs"),
                error=data.get("error"),
                attempts=int(data.get("attempt", 0)) + 1,
                total_tokens=int(data.get("total_tokens", 0)),
                finished_at=now,
            )


def _with_ids(request: RunRequest, app: AppRecord) -> RunRequest:
    return replace(request, app_id=app.id, workflow_id=app.id)
