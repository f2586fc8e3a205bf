"""The aggregator: results in, runs advanced (fan-in), outbox out.

Per batch and per run, in one transaction: drop duplicates, apply the scheduler, record
items and node executions, write the outbox; commit, publish (confirmed), then ack. Also
turns dead-lettered tasks into node failures, re-applies dead-lettered results (or fails
their node), relays any outbox rows left by a crash (parking the ones no queue routes),
and ends runs past their deadline. Several aggregators at once are safe: the store
serializes transactions per run.

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
from collections import OrderedDict
from collections.abc import Sequence

from fanflow.errors import DecodeError
from fanflow.health import start_heartbeat
from fanflow.lifecycle import configure_logging, run_until_signalled, serve_metrics
from fanflow.mesh.amqp import AmqpBroker, BrokerError, Delivery, Disposition, Unroutable
from fanflow.mesh.driver import KIND_TASK, Envelope, RunDriver
from fanflow.mesh.relay import OutboxRelay
from fanflow.messages import NodeTask, TaskResult
from fanflow.metrics import (
    AGGREGATOR_BATCH,
    AGGREGATOR_TRANSIENT_ERRORS,
    DEAD_LETTERS,
    RESULTS_APPLIED,
    start_aggregator_series,
)
from fanflow.scheduler import TaskFinished, TimerFired
from fanflow.scheduler.protocol import DEADLINE_TIMER
from fanflow.settings import Settings
from fanflow.store import AppRecord, Backoff, OutboxMessage, RunNotFound, Store, is_transient

log = logging.getLogger("fanflow.aggregator")
_APP_CACHE_SIZE = 10_000
#: the longest pause between two tries of a batch the database refused (transiently)
REQUEUE_BACKOFF_S = 2.0
#: the first pause; doubled (jittered) up to REQUEUE_BACKOFF_S
FIRST_BACKOFF_S = 0.1
#: a header counting how often a dead task that failed to apply was put back
HEADER_DEAD_RETRIES = "fanflow-dead-retries"
#: runs of one batch applied at once, each in its own transaction and connection
RUNS_IN_PARALLEL = 4


class Aggregator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = settings.topology()
        self.limits = settings.limits()
        self._run_apps: OrderedDict[str, AppRecord] = OrderedDict()
        self.store: Store | None = None
        self.driver: RunDriver | None = None
        self.relay: OutboxRelay | None = None
        self.broker: AmqpBroker | None = None
        self._stopping = asyncio.Event()

    async def async_run(self, stop: asyncio.Event) -> None:
        start_aggregator_series()
        self.store = await Store.open(self.settings.database_url)
        try:
            async with AmqpBroker(
                self.settings.amqp_url, topology=self.topology, connection_name="fanflow-aggregator"
            ) as broker:
                await broker.declare()
                self.broker = broker
                self.driver = RunDriver(self.store, self.topology, limits=self.limits)
                self.relay = OutboxRelay(self.store, broker, on_unroutable=self.park_unroutable)
                # whatever a crashed process committed and never published, at once
                try:
                    recovered = await self.relay.sweep(grace_s=0)
                except Exception as exc:
                    if not (isinstance(exc, BrokerError) or is_transient(exc)):
                        raise
                    log.warning("startup outbox sweep failed, left to the periodic one: %s", exc)
                    recovered = 0
                if recovered:
                    log.info("relayed %d outbox message(s) left by an earlier process", recovered)
                batch = self.settings.aggregator_batch_size
                wait_s = self.settings.aggregator_batch_wait_s
                await broker.consume_batches(
                    self.topology.results_queue,
                    self.handle_results,
                    batch_size=batch,
                    max_wait_s=wait_s,
                )
                await broker.consume_batches(
                    self.topology.dead_tasks_queue,
                    self.handle_dead_tasks,
                    batch_size=batch,
                    max_wait_s=wait_s,
                )
                await broker.consume_batches(
                    self.topology.dead_results_queue,
                    self.handle_dead_results,
                    batch_size=batch,
                    max_wait_s=wait_s,
                )
                store = self.store
                sweepers = [
                    *_tasks(
                        start_heartbeat(
                            "aggregator",
                            self.settings.health_file,
                            {"broker": broker.health, "database": store.ping},
                        )
                    ),
                    asyncio.create_task(
                        self._every(self.settings.outbox_sweep_interval_s, self.relay.sweep)
                    ),
                    asyncio.create_task(
                        self._every(self.settings.deadline_sweep_interval_s, self.end_overdue_runs)
                    ),
                ]
                log.info("aggregating results")
                await stop.wait()
                self._stopping.set()  # a batch held for the database goes back to its queue
                for sweeper in sweepers:
                    sweeper.cancel()
                await broker.drain(timeout_s=self.settings.drain_timeout_s)
        finally:
            await self.store.close()

    # ---- handlers ----------------------------------------------------------------------

    async def handle_results(self, deliveries: Sequence[Delivery]) -> list[Disposition]:
        AGGREGATOR_BATCH.observe(len(deliveries))
        envelopes: list[tuple[str, Envelope] | None] = []
        for delivery in deliveries:
            try:
                result = TaskResult.decode(delivery.body)
            except DecodeError:
                log.exception("rejecting an undecodable result %s", delivery.message_id)
                envelopes.append(None)
                continue
            message_id = delivery.message_id or self.topology.result_message_id(result.task_id)
            envelopes.append((result.run_id, Envelope(TaskFinished(result), message_id)))
        return await self._apply_grouped(envelopes, queue="results")

    async def handle_dead_tasks(self, deliveries: Sequence[Delivery]) -> list[Disposition]:
        """A task the broker gave up on fails its node (and so its run, or its error branch).

        Never requeued: the dead-task queue has a delivery limit and nowhere to dead-letter
        to. A failure that cannot be applied now (for another reason than the database,
        which holds the batch) is put back at the end of the queue after a pause.
        """
        queue = "dead_tasks"  # the metrics' label
        envelopes: list[tuple[str, Envelope] | None] = []
        for delivery in deliveries:
            try:
                task = NodeTask.decode(delivery.body)
            except DecodeError:
                log.error("dropping an undecodable dead-lettered task %s", delivery.message_id)
                DEAD_LETTERS.labels(queue, "undecodable").inc()
                envelopes.append(None)
                continue
            failure = task.failed(
                f"{task.node_id} ({task.node_title}): the task was dead-lettered after "
                f"{delivery.delivery_count + 1} deliveries (a worker crashed or rejected it)",
                error_type="DeadLettered",
                retryable=False,
            )
            envelopes.append((task.run_id, Envelope(TaskFinished(failure), f"dead:{task.task_id}")))
        dispositions = await self._apply_grouped(envelopes, queue=queue)
        settled = []
        for delivery, item, disposition in zip(deliveries, envelopes, dispositions, strict=True):
            if item is None:  # undecodable: nowhere else to go, acknowledged (logged above)
                settled.append(Disposition.ACK)
            elif disposition is Disposition.REQUEUE:
                settled.append(await self._put_back(self.topology.dead_tasks_queue, delivery))
            else:
                DEAD_LETTERS.labels(queue, "failed_node").inc()
                settled.append(disposition)
        return settled

    async def _put_back(self, queue: str, delivery: Delivery) -> Disposition:
        """Publish a dead task again at the end of its queue (a fresh delivery count), then
        acknowledge this delivery; requeue it when the broker will not take it."""
        assert self.broker is not None
        await asyncio.sleep(REQUEUE_BACKOFF_S)
        retries = int(delivery.headers.get(HEADER_DEAD_RETRIES, 0) or 0) + 1
        headers = {k: v for k, v in delivery.headers.items() if not k.startswith("x-")}
        try:
            await self.broker.publish_raw(
                "",
                queue,
                delivery.body,
                message_id=delivery.message_id,
                headers={**headers, HEADER_DEAD_RETRIES: retries},
            )
        except BrokerError as exc:
            log.warning("could not put dead task %s back: %s", delivery.message_id, exc)
            return Disposition.REQUEUE
        DEAD_LETTERS.labels("dead_tasks", "retried_later").inc()
        log.error(
            "dead task %s could not fail its node (try %d); put back for later",
            delivery.message_id,
            retries,
        )
        return Disposition.ACK

    async def handle_dead_results(self, deliveries: Sequence[Delivery]) -> list[Disposition]:
        """A result that exhausted its deliveries: applied once more (its message id is the
        original one, so one applied meanwhile changes nothing); if it still fails for its
        content, its node fails with an error saying so. Never requeued."""
        queue = "dead_results"  # the metrics' label
        results: list[TaskResult | None] = []
        for delivery in deliveries:
            try:
                results.append(TaskResult.decode(delivery.body))
            except DecodeError:
                log.error("dropping an undecodable dead-lettered result %s", delivery.message_id)
                DEAD_LETTERS.labels(queue, "undecodable").inc()
                results.append(None)
        envelopes: list[tuple[str, Envelope] | None] = [
            None
            if result is None
            else (
                result.run_id,
                Envelope(
                    TaskFinished(result),
                    delivery.message_id or self.topology.result_message_id(result.task_id),
                ),
            )
            for delivery, result in zip(deliveries, results, strict=True)
        ]
        first = await self._apply_grouped(envelopes, queue=queue)
        failures: list[tuple[str, Envelope] | None] = []
        for result, disposition in zip(results, first, strict=True):
            if result is None or disposition is not Disposition.REQUEUE:
                if result is not None:
                    DEAD_LETTERS.labels(queue, "applied").inc()
                failures.append(None)
                continue
            failed = result.model_copy(
                update={
                    "status": "failed",
                    "outputs": {},
                    "error": f"{result.node_id}: its result could not be applied to the run "
                    "(dead-lettered after repeated failures; see the aggregator log)",
                    "error_type": "ResultNotApplicable",
                    "retryable": False,
                }
            )
            failures.append(
                (result.run_id, Envelope(TaskFinished(failed), f"dead-result:{result.task_id}"))
            )
        second = await self._apply_grouped(failures, queue=queue)
        for item, disposition in zip(failures, second, strict=True):
            if item is None:
                continue
            if disposition is Disposition.REQUEUE:
                log.error(
                    "dead result for run %s: neither it nor its failure applies; dropped", item[0]
                )
                DEAD_LETTERS.labels(queue, "dropped").inc()
            else:
                DEAD_LETTERS.labels(queue, "failed_node").inc()
        return [Disposition.ACK] * len(deliveries)

    async def _apply_grouped(
        self, envelopes: Sequence[tuple[str, Envelope] | None], *, queue: str = "results"
    ) -> list[Disposition]:
        by_run: dict[str, list[int]] = {}
        for position, item in enumerate(envelopes):
            if item is not None:
                by_run.setdefault(item[0], []).append(position)
        dispositions = [Disposition.REJECT] * len(envelopes)
        runs = list(by_run.items())
        # one transaction per run, several runs at once (PostgreSQL locks rows, so they
        # proceed in parallel; SQLite has one writer, so there they take turns)
        width = 1 if self._single_writer else RUNS_IN_PARALLEL
        for start in range(0, len(runs), width):
            group = runs[start : start + width]
            outcomes = await asyncio.gather(
                *(
                    self._apply(run_id, [envelopes[p][1] for p in positions], queue=queue)  # type: ignore[index]
                    for run_id, positions in group
                )
            )
            for (_, positions), outcome in zip(group, outcomes, strict=True):
                for position in positions:
                    dispositions[position] = outcome
        return dispositions

    @property
    def _single_writer(self) -> bool:
        return self.store is None or self.store.engine.dialect.name == "sqlite"

    async def _apply(
        self, run_id: str, envelopes: list[Envelope], *, queue: str = "results"
    ) -> Disposition:
        """Apply envelopes to a run. While the database is away the call waits and tries
        again (the deliveries stay unacknowledged: nothing is spent); a permanent failure
        requeues them; on shutdown a held batch is requeued."""
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
                AGGREGATOR_TRANSIENT_ERRORS.labels(queue).inc()
                if self._stopping.is_set():
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
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def _apply_once(self, run_id: str, envelopes: list[Envelope]) -> Disposition:
        assert self.driver is not None and self.relay is not None
        try:
            app = await self._app_of(run_id)
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
        outcome = await self._apply(task.run_id, [envelope], queue="outbox")
        if outcome is not Disposition.ACK:
            raise RuntimeError(f"could not fail node {task.node_id} of run {task.run_id}")

    async def _app_of(self, run_id: str) -> AppRecord | None:
        app = self._run_apps.get(run_id)
        if app is not None:
            return app
        assert self.store is not None
        run = await self.store.get_run(run_id)
        if run is None:
            return None
        app = await self.store.get_app(run.app_id)
        if app is not None:
            self._run_apps[run_id] = app
            while len(self._run_apps) > _APP_CACHE_SIZE:
                self._run_apps.popitem(last=False)
        return app

    # ---- sweepers ----------------------------------------------------------------------

    async def end_overdue_runs(self) -> int:
        """Runs past the run deadline end as stopped (the scheduler names the limit)."""
        assert self.store is not None
        if not self.settings.max_run_seconds:
            return 0  # no deadline
        cutoff = time.time() - self.settings.max_run_seconds
        overdue = await self.store.overdue_runs(created_before=cutoff)
        for run_id in overdue:
            await self._apply(
                run_id,
                [Envelope(TimerFired(DEADLINE_TIMER), f"deadline:{run_id}")],
                queue="deadline",
            )
        return len(overdue)

    @staticmethod
    async def _every(interval_s: float, action) -> None:  # type: ignore[no-untyped-def]
        while True:
            await asyncio.sleep(interval_s)
            try:
                await action()
            except Exception as exc:
                name = getattr(action, "__name__", action)
                if isinstance(exc, BrokerError) or is_transient(exc):
                    log.warning("periodic %s failed: %s: %s", name, type(exc).__name__, exc)
                else:
                    log.exception("periodic %s failed", name)


def _tasks(task: asyncio.Task[None] | None) -> list[asyncio.Task[None]]:
    return [task] if task is not None else []


def run(settings: Settings) -> None:
    configure_logging("aggregator")
    serve_metrics(settings.metrics_port)
    run_until_signalled(Aggregator(settings).async_run)
