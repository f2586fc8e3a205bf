"""The worker: consumes node tasks of its classes, runs them, publishes results, then acks.

Holds no database connection: a task carries everything it needs. Prefetch per class is
its concurrency for that class (the first rate-limit knob). On SIGTERM it stops taking
tasks, finishes the ones in flight, and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fanflow.executors import ExecutionContext, execute_with_timeout
from fanflow.executors.wiring import (
    context_from_settings,
    http_pool_from_settings,
    sandbox_from_settings,
)
from fanflow.health import start_heartbeat
from fanflow.lifecycle import configure_logging, run_until_signalled, serve_metrics
from fanflow.mesh.amqp import AmqpBroker, Disposition
from fanflow.mesh.topology import HEADER_READY_AT
from fanflow.messages import NodeTask, TaskResult
from fanflow.metrics import NODE_DURATION, NODE_EXECUTIONS, QUEUE_WAIT, TASKS_IN_FLIGHT
from fanflow.sandbox.pool import SandboxPool
from fanflow.settings import Settings

log = logging.getLogger("fanflow.worker")
#: how many stopped run ids a worker remembers (stop broadcasts are not replayed)
STOPPED_RUNS_REMEMBERED = 10_000


#: a class's prefetch when neither its setting nor FANFLOW_WORKER_PREFETCH is set: I/O-bound
#: classes wait on upstreams, so many in flight; code runs on this machine's CPUs
DEFAULT_PREFETCH = {"llm": 64, "http": 64, "tool": 16}


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def prefetch_for(settings: Settings, cls: str, *, prefetch: int | None = None) -> int:
    """One class's prefetch: `prefetch` (the CLI's `--prefetch`), else the class's own
    setting (`FANFLOW_WORKER_PREFETCH_LLM`), else FANFLOW_WORKER_PREFETCH, else its default."""
    if prefetch:
        return prefetch
    own = getattr(settings, f"worker_prefetch_{cls}", None)
    if own:
        return int(own)
    if settings.worker_prefetch:
        return settings.worker_prefetch
    return DEFAULT_PREFETCH.get(cls, cpu_count())


class Worker:
    def __init__(
        self, settings: Settings, *, queues: list[str], prefetch: int | None = None
    ) -> None:
        self.settings = settings
        self.queues = queues
        self.prefetch = {cls: prefetch_for(settings, cls, prefetch=prefetch) for cls in queues}
        self.topology = settings.topology()
        self.context: ExecutionContext = context_from_settings(settings)
        self._stopped: OrderedDict[str, None] = OrderedDict()
        self._running: dict[str, set[asyncio.Task[TaskResult]]] = {}
        self._broker: AmqpBroker | None = None

    async def async_run(self, stop: asyncio.Event) -> None:
        unknown = [q for q in self.queues if q not in self.topology.classes]
        if unknown:
            raise SystemExit(
                f"unknown queue class(es) {unknown}; known: {', '.join(self.topology.classes)}"
            )
        async with (
            http_pool_from_settings(
                self.settings, concurrency=sum(self.prefetch.values())
            ) as http_pool,
            # the warm code sandbox: as many zygotes as code tasks run at once
            _closing(
                sandbox_from_settings(self.settings, size=self.prefetch.get("code"))
            ) as sandbox,
            AmqpBroker(
                self.settings.amqp_url, topology=self.topology, connection_name="fanflow-worker"
            ) as broker,
        ):
            # one pool for every LLM and http-request call of this process, one code sandbox
            self.context = replace(self.context, http_pool=http_pool, code_sandbox=sandbox)
            self._broker = broker
            await broker.declare()
            control = await broker.subscribe_control()
            listener = asyncio.create_task(self._listen(control))
            heartbeat = start_heartbeat(
                "worker", self.settings.health_file, {"broker": broker.health}
            )
            for cls in self.queues:
                await broker.consume(
                    self.topology.task_queue(cls), self.handle, prefetch=self.prefetch[cls]
                )
            log.info(
                "serving %s with prefetch %s",
                ",".join(self.queues),
                ",".join(f"{cls}={n}" for cls, n in self.prefetch.items()),
            )
            try:
                await stop.wait()
            finally:
                # a draining worker is not healthy: it takes no new tasks
                if heartbeat is not None:
                    heartbeat.cancel()
                listener.cancel()
            log.info("draining in-flight tasks")
            await broker.drain(timeout_s=self.settings.drain_timeout_s)

    async def _listen(self, control) -> None:  # type: ignore[no-untyped-def]
        async for message in control:
            run_id = message.get("stop_run")
            if isinstance(run_id, str):
                self._stopped[run_id] = None
                while len(self._stopped) > STOPPED_RUNS_REMEMBERED:
                    self._stopped.popitem(last=False)
                for running in list(self._running.get(run_id, ())):
                    running.cancel()

    async def handle(self, body: bytes, headers: dict[str, Any], redelivered: bool) -> Disposition:
        task = NodeTask.decode(body)
        if task.run_id in self._stopped:
            return Disposition.ACK  # the run is over; nobody waits for this result
        cls = self.topology.class_for(task.node_type)
        _observe_queue_wait(cls, headers)
        execution = asyncio.create_task(self._execute(task))
        self._running.setdefault(task.run_id, set()).add(execution)
        TASKS_IN_FLIGHT.labels(cls).inc()
        started = time.monotonic()
        try:
            result = await execution
        except asyncio.CancelledError:
            if task.run_id in self._stopped:
                log.info("task %s cancelled: run %s stopped", task.task_id, task.run_id)
                return Disposition.ACK
            raise
        finally:
            TASKS_IN_FLIGHT.labels(cls).dec()
            running = self._running.get(task.run_id)
            if running is not None:
                running.discard(execution)
                if not running:
                    del self._running[task.run_id]
        NODE_DURATION.labels(task.node_type).observe(time.monotonic() - started)
        NODE_EXECUTIONS.labels(task.node_type, result.status).inc()
        assert self._broker is not None
        await self._broker.publish_result(result)
        if self.settings.fault_duplicate_results:
            await self._broker.publish_result(result)
        return Disposition.ACK

    async def _execute(self, task: NodeTask) -> TaskResult:
        return await execute_with_timeout(
            task, self.context, timeout_s=self.settings.task_timeout_s
        )


@contextlib.asynccontextmanager
async def _closing(sandbox: SandboxPool) -> AsyncIterator[SandboxPool]:
    try:
        yield sandbox
    finally:
        sandbox.close()


def _observe_queue_wait(cls: str, headers: dict[str, Any]) -> None:
    try:
        ready_at = float(headers.get(HEADER_READY_AT, ""))
    except (TypeError, ValueError):
        return  # published by something else than the driver
    QUEUE_WAIT.labels(cls).observe(max(0.0, time.time() - ready_at))


def run(settings: Settings, *, queues: list[str], prefetch: int | None = None) -> None:
    configure_logging("worker")
    serve_metrics(settings.metrics_port)
    worker = Worker(settings, queues=queues, prefetch=prefetch)
    run_until_signalled(worker.async_run)
