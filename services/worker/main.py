"""The worker service: consumes node tasks of its classes, runs them, publishes results.

A shell around `fanflow.mesh.worker.Worker`: builds the execution context (one pooled HTTP
client, one warm code sandbox), opens the broker, consumes each class with its prefetch
(its concurrency for that class, the first rate-limit knob), writes the heartbeat; on
SIGTERM it stops taking tasks, finishes the ones in flight, and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

from fanflow import (
    AmqpBroker,
    NodeTask,
    SandboxPool,
    Settings,
    TaskResult,
    Worker,
    configure_logging,
    context_from_settings,
    execute_with_timeout,
    http_pool_from_settings,
    prefetch_for,
    run_until_signalled,
    sandbox_from_settings,
    serve_metrics,
    start_heartbeat,
)

log = logging.getLogger("fanflow.worker")


async def async_run(
    settings: Settings, stop: asyncio.Event, *, queues: list[str], prefetch: int | None = None
) -> None:
    topology = settings.topology()
    unknown = [q for q in queues if q not in topology.classes]
    if unknown:
        raise SystemExit(f"unknown queue class(es) {unknown}; known: {', '.join(topology.classes)}")
    per_class = {cls: prefetch_for(settings, cls, prefetch=prefetch) for cls in queues}
    try:
        result_key = settings.result_signing_key()
    except ValueError as exc:
        raise SystemExit(f"worker: {exc}") from None
    if result_key is None:
        log.warning("INSECURE: results are published unsigned (FANFLOW_INSECURE_UNSIGNED_RESULTS)")
    async with (
        http_pool_from_settings(settings, concurrency=sum(per_class.values())) as http_pool,
        # the warm code sandbox: as many zygotes as code tasks run at once
        _closing(sandbox_from_settings(settings, size=per_class.get("code"))) as sandbox,
        AmqpBroker(
            settings.amqp_url, topology=topology, connection_name="fanflow-worker"
        ) as broker,
    ):
        # one pool for every LLM and http-request call of this process, one code sandbox
        context = replace(
            context_from_settings(settings), http_pool=http_pool, code_sandbox=sandbox
        )

        async def execute(task: NodeTask) -> TaskResult:
            return await execute_with_timeout(task, context, timeout_s=settings.task_timeout_s)

        worker = Worker(
            broker,
            execute,
            topology=topology,
            result_key=result_key,
            duplicate_results=settings.fault_duplicate_results,
        )
        if settings.declare_topology:
            await broker.declare()
        listener = await worker.start(per_class)
        heartbeat = start_heartbeat("worker", settings.health_file, {"broker": broker.health})
        log.info(
            "serving %s with prefetch %s",
            ",".join(queues),
            ",".join(f"{cls}={n}" for cls, n in per_class.items()),
        )
        try:
            await stop.wait()
        finally:
            # a draining worker is not healthy: it takes no new tasks
            if heartbeat is not None:
                heartbeat.cancel()
            listener.cancel()
        log.info("draining in-flight tasks")
        await broker.drain(timeout_s=settings.drain_timeout_s)


@contextlib.asynccontextmanager
async def _closing(sandbox: SandboxPool) -> AsyncIterator[SandboxPool]:
    try:
        yield sandbox
    finally:
        sandbox.close()


def run(settings: Settings, *, queues: list[str], prefetch: int | None = None) -> None:
    configure_logging("worker")
    serve_metrics(settings.metrics_port)
    run_until_signalled(lambda stop: async_run(settings, stop, queues=queues, prefetch=prefetch))
