"""The aggregator service: results in, runs advanced (fan-in), outbox out.

A shell around `fanflow.mesh.aggregator.Aggregator`: opens the store and the broker,
starts the consumers, the sweeps and the heartbeat, and drains on SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging

from fanflow import (
    Aggregator,
    AmqpBroker,
    Settings,
    Store,
    configure_logging,
    run_until_signalled,
    serve_metrics,
    start_heartbeat,
)

log = logging.getLogger("fanflow.aggregator")


async def async_run(settings: Settings, stop: asyncio.Event) -> None:
    topology = settings.topology()
    try:
        result_key = settings.result_signing_key()
    except ValueError as exc:
        raise SystemExit(f"aggregator: {exc}") from None
    if result_key is None:
        log.warning(
            "INSECURE: unsigned results are applied (FANFLOW_INSECURE_UNSIGNED_RESULTS): "
            "anything that reaches the broker can forge any run's result"
        )
    store = await Store.open(settings.database_url)
    try:
        async with AmqpBroker(
            settings.amqp_url, topology=topology, connection_name="fanflow-aggregator"
        ) as broker:
            await broker.declare()
            aggregator = Aggregator(
                store, broker, topology=topology, limits=settings.limits(), result_key=result_key
            )
            background = await aggregator.start(
                batch_size=settings.aggregator_batch_size,
                max_wait_s=settings.aggregator_batch_wait_s,
                outbox_sweep_s=settings.outbox_sweep_interval_s,
                deadline_sweep_s=settings.deadline_sweep_interval_s,
            )
            heartbeat = start_heartbeat(
                "aggregator",
                settings.health_file,
                {"broker": broker.health, "database": store.ping},
            )
            if heartbeat is not None:
                background.append(heartbeat)
            log.info("aggregating results")
            await stop.wait()
            aggregator.stopping.set()  # a batch held for the database goes back to its queue
            for task in background:
                task.cancel()
            # a sweep cancelled mid-transaction ends before the store closes
            await asyncio.gather(*background, return_exceptions=True)
            await broker.drain(timeout_s=settings.drain_timeout_s)
    finally:
        await store.close()


def run(settings: Settings) -> None:
    configure_logging("aggregator")
    serve_metrics(settings.metrics_port)
    run_until_signalled(lambda stop: async_run(settings, stop))
