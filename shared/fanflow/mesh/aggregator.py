"""The aggregator's logic (fan-in): results and dead-lettered tasks applied to stored runs.

Per batch and per run, in one transaction: drop duplicates, apply the scheduler, record
items and node executions, write the outbox; commit, publish (confirmed), then ack. A task
the broker dead-lettered fails its node, a dead-lettered result is applied once more (or
fails its node: `fanflow.mesh.dead_letters`); an outbox row no queue routes fails its node
and is parked; runs past their deadline end as stopped. Several aggregators at once are
safe: the store serializes transactions per run. Works over either broker (`AmqpBroker`,
`MemoryBroker`); the service only wires it up.

A database that is away or busy (`fanflow.store.is_transient`) pauses the batch: its
messages stay unacknowledged and are applied again after a jittered backoff capped at
REQUEUE_BACKOFF_S, so no delivery is spent on it. Only a message that fails for its own
content is requeued (the quorum delivery limit then dead-letters it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from fanflow.errors import DecodeError
from fanflow.lifecycle import every
from fanflow.mesh.dead_letters import DEAD_LETTERED, DeadLetters, dead_task_failure
from fanflow.mesh.driver import KIND_TASK, Envelope, RunDriver
from fanflow.mesh.relay import OutboxRelay
from fanflow.mesh.run_apps import RunApps
from fanflow.mesh.signing import ResultKey, rejected
from fanflow.mesh.topology import Topology
from fanflow.mesh.transport import Broker, BrokerError, Delivery, Disposition, Unroutable
from fanflow.messages import NodeTask, TaskResult
from fanflow.metrics import (
    AGGREGATOR_BATCH,
    AGGREGATOR_TRANSIENT_ERRORS,
    RESULTS_APPLIED,
    start_aggregator_series,
)
from fanflow.scheduler import Limits, TaskFinished, TimerFired
from fanflow.scheduler.protocol import DEADLINE_TIMER
from fanflow.store import Backoff, OutboxMessage, RunNotFound, Store, is_transient

__all__ = ["DEAD_LETTERED", "Aggregator", "dead_task_failure"]

log = logging.getLogger("fanflow.aggregator")
#: runs of one batch applied at once, each in its own transaction and connection
RUNS_IN_PARALLEL = 4
#: the longest pause between two tries of a batch the database refused (transiently)
REQUEUE_BACKOFF_S = 2.0
#: the first pause; doubled (jittered) up to REQUEUE_BACKOFF_S
FIRST_BACKOFF_S = 0.1


class Aggregator:
    """Applies results, dead-lettered tasks and deadlines to the runs in `store`, and
    publishes what each step committed through `broker`."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        topology: Topology,
        limits: Limits,
        result_key: ResultKey | None = None,
        runs_in_parallel: int = RUNS_IN_PARALLEL,
    ) -> None:
        self.store = store
        self.broker = broker
        self.topology = topology
        self.limits = limits
        #: results must be signed with it (None: unsigned results are applied too)
        self.result_key = result_key
        self.runs_in_parallel = runs_in_parallel
        self.driver = RunDriver(store, topology, limits=limits)
        self.relay = OutboxRelay(store, broker, on_unroutable=self.park_unroutable)
        self.apps = RunApps(store)
        self.dead_letters = DeadLetters(
            self, broker, topology, pause_s=REQUEUE_BACKOFF_S, result_key=result_key
        )
        #: set when the process stops: a batch held for the database goes back to its queue
        self.stopping = asyncio.Event()
        start_aggregator_series()

    async def recover(self) -> int:
        """Publish at once whatever a crashed process committed and never published; a
        broker or database failure leaves the rows to the periodic sweep."""
        try:
            recovered = await self.relay.sweep(grace_s=0)
        except Exception as exc:
            if not (isinstance(exc, BrokerError) or is_transient(exc)):
                raise
            log.warning("startup outbox sweep failed, left to the periodic one: %s", exc)
            return 0
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
            (self.topology.dead_tasks_queue, self.dead_letters.handle_tasks),
            (self.topology.dead_results_queue, self.dead_letters.handle_results),
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
        envelopes: list[tuple[str, Envelope] | None] = []
        dropped: list[int] = []  # unsigned or forged: acknowledged, never applied
        for position, delivery in enumerate(deliveries):
            if rejected(self.result_key, delivery, queue="results"):
                dropped.append(position)
                envelopes.append(None)
                continue
            try:
                result = TaskResult.decode(delivery.body)
            except DecodeError:
                log.exception("rejecting an undecodable result %s", delivery.message_id)
                envelopes.append(None)
                continue
            message_id = delivery.message_id or self.topology.result_message_id(result.task_id)
            envelopes.append((result.run_id, Envelope(TaskFinished(result), message_id)))
        dispositions = await self.apply_grouped(envelopes, source="results")
        for position in dropped:
            dispositions[position] = Disposition.ACK
        return dispositions

    async def handle_dead_tasks(self, deliveries: Sequence[Delivery]) -> list[Disposition]:
        """A task the broker gave up on fails its node (`DeadLetters.handle_tasks`)."""
        return await self.dead_letters.handle_tasks(deliveries)

    async def end_overdue_runs(self) -> int:
        """Runs past the run deadline end as stopped (the scheduler names the limit)."""
        if not self.limits.max_run_seconds:
            return 0  # no deadline
        cutoff = time.time() - self.limits.max_run_seconds
        overdue = await self.store.overdue_runs(created_before=cutoff)
        for run_id in overdue:
            envelope = Envelope(TimerFired(DEADLINE_TIMER), f"deadline:{run_id}")
            await self._apply(run_id, [envelope], source="deadline")
        return len(overdue)

    # ---- applying, per run -------------------------------------------------------------

    async def apply_grouped(
        self, envelopes: Sequence[tuple[str, Envelope] | None], *, source: str
    ) -> list[Disposition]:
        """One Disposition per envelope (REJECT for None), applied per run; `source` names
        where they came from in the metrics."""
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
                    self._apply(run_id, [envelopes[p][1] for p in positions], source=source)  # type: ignore[index]
                    for run_id, positions in group
                )
            )
            for (_, positions), outcome in zip(group, outcomes, strict=True):
                for position in positions:
                    dispositions[position] = outcome
        return dispositions

    async def _apply(self, run_id: str, envelopes: list[Envelope], *, source: str) -> Disposition:
        """Apply envelopes to a run. While the database is away the call waits and tries
        again (the deliveries stay unacknowledged: nothing is spent); a permanent failure
        requeues them; once stopping, a held batch is requeued."""
        backoff = Backoff(initial_s=FIRST_BACKOFF_S, cap_s=REQUEUE_BACKOFF_S)
        while True:
            try:
                return await self._apply_once(run_id, envelopes)
            except Exception as exc:
                if not is_transient(exc):
                    log.exception(
                        "applying %d message(s) to run %s failed; requeued", len(envelopes), run_id
                    )
                    RESULTS_APPLIED.labels("error").inc(len(envelopes))
                    return Disposition.REQUEUE
                AGGREGATOR_TRANSIENT_ERRORS.labels(source).inc()
                if self.stopping.is_set():
                    return Disposition.REQUEUE
                delay = backoff.next_delay()
                log.warning(
                    "run %s: database unavailable (%s: %s); holding %d message(s), retry in %.2f s",
                    run_id,
                    type(exc).__name__,
                    str(exc).splitlines()[0][:160] if str(exc) else "",
                    len(envelopes),
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)

    async def _apply_once(self, run_id: str, envelopes: list[Envelope]) -> Disposition:
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
        RESULTS_APPLIED.labels("applied").inc(len(envelopes))
        if published.messages:  # rows, or best-effort events only
            try:
                await self.relay.publish(published)
            except Exception as exc:
                if not (isinstance(exc, BrokerError) or is_transient(exc)):
                    raise
                # committed: the rows stay in the outbox and the sweep publishes them; the
                # results must not be applied again
                log.warning("publishing run %s's step failed, left to the sweep: %s", run_id, exc)
        return Disposition.ACK

    async def park_unroutable(self, message: OutboxMessage, error: Unroutable) -> None:
        """A committed task no queue routes fails its node (the relay then drops the row);
        raises while that failure is not recorded, so the row stays for the next sweep."""
        if message.kind != KIND_TASK:
            return  # events and controls are never mandatory: nothing waits on them
        try:
            task = NodeTask.decode(message.body)
        except DecodeError:
            log.error("unroutable outbox message %s is undecodable; dropped", message.message_id)
            return
        failure = task.failed(
            f"{task.node_id} ({task.node_title}): the task could not be published: {error}; "
            f"no worker queue serves class {message.routing!r}",
            error_type="Unroutable",
            retryable=False,
        )
        envelope = Envelope(TaskFinished(failure), f"unroutable:{task.task_id}")
        if await self._apply(task.run_id, [envelope], source="outbox") is not Disposition.ACK:
            raise RuntimeError(f"could not fail node {task.node_id} of run {task.run_id}")
