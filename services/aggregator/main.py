"""The aggregator: results in, runs advanced (fan-in), outbox out.

Per batch and per run, in one transaction: drop duplicates, apply the scheduler, record
items and node executions, write the outbox; commit, publish (confirmed), then ack. Also
turns dead-lettered tasks into node failures, relays any outbox rows left by a crash, and
ends runs past their deadline. Several aggregators at once are safe: the store serializes
transactions per run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

from fanflow.errors import DecodeError
from fanflow.health import start_heartbeat
from fanflow.lifecycle import configure_logging, run_until_signalled, serve_metrics
from fanflow.mesh.amqp import AmqpBroker, BrokerError, Delivery, Disposition
from fanflow.mesh.driver import Envelope, RunDriver
from fanflow.mesh.relay import OutboxRelay
from fanflow.messages import NodeTask, TaskResult
from fanflow.metrics import AGGREGATOR_BATCH, RESULTS_APPLIED
from fanflow.scheduler import TaskFinished, TimerFired
from fanflow.scheduler.protocol import DEADLINE_TIMER
from fanflow.settings import Settings
from fanflow.store import AppRecord, RunNotFound, Store

log = logging.getLogger("fanflow.aggregator")
_APP_CACHE_SIZE = 10_000
REQUEUE_BACKOFF_S = 2.0
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

    async def async_run(self, stop: asyncio.Event) -> None:
        self.store = await Store.open(self.settings.database_url)
        try:
            async with AmqpBroker(
                self.settings.amqp_url, topology=self.topology, connection_name="fanflow-aggregator"
            ) as broker:
                await broker.declare()
                self.driver = RunDriver(self.store, self.topology, limits=self.limits)
                self.relay = OutboxRelay(self.store, broker)
                # whatever a crashed process committed and never published, at once
                recovered = await self.relay.sweep(grace_s=0)
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
        return await self._apply_grouped(envelopes)

    async def handle_dead_tasks(self, deliveries: Sequence[Delivery]) -> list[Disposition]:
        """A task the broker gave up on fails its node (and so its run, or its error branch)."""
        envelopes: list[tuple[str, Envelope] | None] = []
        for delivery in deliveries:
            try:
                task = NodeTask.decode(delivery.body)
            except DecodeError:
                log.error("dropping an undecodable dead-lettered task %s", delivery.message_id)
                envelopes.append(None)
                continue
            failure = task.failed(
                f"{task.node_id} ({task.node_title}): the task was dead-lettered after "
                f"{delivery.delivery_count + 1} deliveries (a worker crashed or rejected it)",
                error_type="DeadLettered",
                retryable=False,
            )
            envelopes.append((task.run_id, Envelope(TaskFinished(failure), f"dead:{task.task_id}")))
        dispositions = await self._apply_grouped(envelopes)
        # an undecodable dead task has nowhere else to go: acknowledged, logged above
        return [Disposition.ACK if d is Disposition.REJECT else d for d in dispositions]

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
        width = 1 if self._single_writer else RUNS_IN_PARALLEL
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

    @property
    def _single_writer(self) -> bool:
        return self.store is None or self.store.engine.dialect.name == "sqlite"

    async def _apply(self, run_id: str, envelopes: list[Envelope]) -> Disposition:
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
            await self._apply(run_id, [Envelope(TimerFired(DEADLINE_TIMER), f"deadline:{run_id}")])
        return len(overdue)

    @staticmethod
    async def _every(interval_s: float, action) -> None:  # type: ignore[no-untyped-def]
        while True:
            await asyncio.sleep(interval_s)
            try:
                await action()
            except Exception:
                log.exception("periodic %s failed", getattr(action, "__name__", action))


def _tasks(task: asyncio.Task[None] | None) -> list[asyncio.Task[None]]:
    return [task] if task is not None else []


def run(settings: Settings) -> None:
    configure_logging("aggregator")
    serve_metrics(settings.metrics_port)
    run_until_signalled(Aggregator(settings).async_run)
