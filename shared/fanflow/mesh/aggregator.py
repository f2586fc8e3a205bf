"""The aggregator's logic (fan-in): results and dead-lettered tasks applied to stored runs.

Per batch and per run, in one transaction: drop duplicates, apply the scheduler, record
items and node executions, write the outbox; commit, publish (confirmed), then ack. A task
the broker dead-lettered fails its node; runs past their deadline end as stopped. Several
aggregators at once are safe: the store serializes transactions per run. Works over either
broker (`AmqpBroker`, `MemoryBroker`); the service only wires it up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TypeVar

from fanflow.errors import DecodeError
from fanflow.lifecycle import every
from fanflow.mesh.driver import Envelope, RunDriver
from fanflow.mesh.relay import OutboxRelay
from fanflow.mesh.run_apps import RunApps
from fanflow.mesh.topology import Topology
from fanflow.mesh.transport import Broker, BrokerError, Delivery, Disposition
from fanflow.messages import NodeTask, TaskResult
from fanflow.metrics import AGGREGATOR_BATCH, RESULTS_APPLIED
from fanflow.scheduler import Limits, TaskFinished, TimerFired
from fanflow.scheduler.protocol import DEADLINE_TIMER
from fanflow.store import RunNotFound, Store

log = logging.getLogger("fanflow.aggregator")
#: runs of one batch applied at once, each in its own transaction and connection
RUNS_IN_PARALLEL = 4
#: a dead-lettered task's failure type (`TaskResult.error_type`)
DEAD_LETTERED = "DeadLettered"


def dead_task_failure(task: NodeTask, *, deliveries: int) -> TaskResult:
    """The result of a task the broker gave up on after `deliveries` deliveries."""
    return task.failed(
        f"{task.node_id} ({task.node_title}): the task was dead-lettered after "
        f"{deliveries} deliveries (a worker crashed or rejected it)",
        error_type=DEAD_LETTERED,
        retryable=False,
    )


@dataclass
class Aggregator:
    """Applies results, dead-lettered tasks and deadlines to the runs in `store`, and
    publishes what each step committed through `broker`."""

    store: Store
    broker: Broker
    _: KW_ONLY
    topology: Topology
    limits: Limits
    runs_in_parallel: int = RUNS_IN_PARALLEL
    driver: RunDriver = field(init=False)
    relay: OutboxRelay = field(init=False)
    apps: RunApps = field(init=False)

    def __post_init__(self) -> None:
        self.driver = RunDriver(self.store, self.topology, limits=self.limits)
        self.relay = OutboxRelay(self.store, self.broker)
        self.apps = RunApps(self.store)

    async def recover(self) -> int:
        """Publish at once whatever a crashed process committed and never published."""
        recovered = await self.relay.sweep(grace_s=0)
        if recovered:
            log.info("relayed %d outbox message(s) left by an earlier process", recovered)
        return recovered

    async def start(
        self, *, batch_size: int, max_wait_s: float, outbox_sweep_s: float, deadline_sweep_s: float
    ) -> list[asyncio.Task[None]]:
        """Recover, consume results and dead-lettered tasks in batches, and sweep the outbox
        and the deadlines every so often; returns the sweepers (cancel them when stopping)."""
        await self.recover()
        for queue, handler in (
            (self.topology.results_queue, self.handle_results),
            (self.topology.dead_tasks_queue, self.handle_dead_tasks),
        ):
            await self.broker.consume_batches(
                queue, handler, batch_size=batch_size, max_wait_s=max_wait_s
            )
        return [
            asyncio.create_task(every(outbox_sweep_s, self.relay.sweep)),
            asyncio.create_task(every(deadline_sweep_s, self.end_overdue_runs)),
        ]

    # ---- handlers ----------------------------------------------------------------------

    async def handle_results(self, deliveries: Sequence[Delivery]) -> list[Disposition]:
        AGGREGATOR_BATCH.observe(len(deliveries))
        envelopes = [self._result_envelope(delivery) for delivery in deliveries]
        return await self._apply_grouped(envelopes)

    async def handle_dead_tasks(self, deliveries: Sequence[Delivery]) -> list[Disposition]:
        """A task the broker gave up on fails its node (and so its run, or its error branch)."""
        dispositions = await self._apply_grouped([self._dead_envelope(d) for d in deliveries])
        # an undecodable dead task has nowhere else to go: acknowledged, logged when decoded
        return [Disposition.ACK if d is Disposition.REJECT else d for d in dispositions]

    def _result_envelope(self, delivery: Delivery) -> tuple[str, Envelope] | None:
        result = _decoded(TaskResult, delivery, "rejecting an undecodable result")
        if result is None:
            return None
        message_id = delivery.message_id or self.topology.result_message_id(result.task_id)
        return result.run_id, Envelope(TaskFinished(result), message_id)

    @staticmethod
    def _dead_envelope(delivery: Delivery) -> tuple[str, Envelope] | None:
        task = _decoded(NodeTask, delivery, "dropping an undecodable dead-lettered task")
        if task is None:
            return None
        failure = dead_task_failure(task, deliveries=delivery.delivery_count + 1)
        return task.run_id, Envelope(TaskFinished(failure), f"dead:{task.task_id}")

    async def end_overdue_runs(self) -> int:
        """Runs past the run deadline end as stopped (the scheduler names the limit)."""
        if not self.limits.max_run_seconds:
            return 0  # no deadline
        cutoff = time.time() - self.limits.max_run_seconds
        overdue = await self.store.overdue_runs(created_before=cutoff)
        for run_id in overdue:
            await self._apply(run_id, [Envelope(TimerFired(DEADLINE_TIMER), f"deadline:{run_id}")])
        return len(overdue)

    # ---- applying, per run -------------------------------------------------------------

    async def _apply_grouped(
        self, envelopes: Sequence[tuple[str, Envelope] | None]
    ) -> list[Disposition]:
        by_run: dict[str, list[int]] = {}
        for position, item in enumerate(envelopes):
            if item is not None:
                by_run.setdefault(item[0], []).append(position)
        dispositions = [Disposition.REJECT] * len(envelopes)
        runs = list(by_run.items())
        # one transaction per run, several runs at once (PostgreSQL locks rows, so they
        # proceed in parallel; SQLite has one writer, so there they take turns)
        width = 1 if self.store.engine.dialect.name == "sqlite" else self.runs_in_parallel
        for start in range(0, len(runs), width):
            group = runs[start : start + width]
            outcomes = await asyncio.gather(
                *(
                    self._apply(run_id, [envelopes[p][1] for p in positions])  # type: ignore[index]
                    for run_id, positions in group
                )
            )
            for (_, positions), outcome in zip(group, outcomes, strict=True):
                for position in positions:
                    dispositions[position] = outcome
        return dispositions

    async def _apply(self, run_id: str, envelopes: list[Envelope]) -> Disposition:
        try:
            app = await self.apps.get(run_id)
            if app is None:
                log.warning("dropping %d message(s) for unknown run %s", len(envelopes), run_id)
                RESULTS_APPLIED.labels("unknown_run").inc(len(envelopes))
                return Disposition.ACK
            published = await self.driver.apply(app, run_id, envelopes)
        except RunNotFound:
            RESULTS_APPLIED.labels("unknown_run").inc(len(envelopes))
            return Disposition.ACK
        except Exception:
            log.exception(
                "applying %d result(s) to run %s failed; requeued", len(envelopes), run_id
            )
            RESULTS_APPLIED.labels("error").inc(len(envelopes))
            return Disposition.REQUEUE
        RESULTS_APPLIED.labels("applied").inc(len(envelopes))
        if published.messages:  # rows, or best-effort events only
            try:
                await self.relay.publish(published)
            except BrokerError as exc:
                # committed: the rows stay in the outbox and the sweep publishes them; the
                # results must not be applied again
                log.warning("publishing run %s's step failed, left to the sweep: %s", run_id, exc)
        return Disposition.ACK


M = TypeVar("M", NodeTask, TaskResult)


def _decoded(message_type: type[M], delivery: Delivery, problem: str) -> M | None:
    try:
        message: M = message_type.decode(delivery.body)
    except DecodeError:
        log.exception("%s %s", problem, delivery.message_id)
        return None
    return message
