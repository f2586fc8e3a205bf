"""What the trigger's routes share for the life of the process: store, broker, driver, relay,
the one event subscription."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from fanflow_services.trigger.imports import ImportChecker
from fanflow_services.trigger.streams import RunEvents
from fastapi import Request

from fanflow.mesh.amqp import AmqpBroker, BrokerError
from fanflow.mesh.driver import RunDriver
from fanflow.mesh.relay import OutboxRelay
from fanflow.settings import Settings
from fanflow.store import Store, is_transient

log = logging.getLogger("fanflow.trigger")


@dataclass
class Trigger:
    settings: Settings
    store: Store
    broker: AmqpBroker
    driver: RunDriver
    relay: OutboxRelay
    events: RunEvents
    max_request_bytes: int
    #: parses and validates imported workflow files in a helper process
    imports: ImportChecker = field(default_factory=ImportChecker)
    #: tasks that outlive their request (callbacks of async runs); cancelled at shutdown
    background: set[asyncio.Task[None]] = field(default_factory=set)

    async def publish(self, run_id: str, outbox_ids: Sequence[int]) -> None:
        """Relay what the run's transaction just committed. On a broker failure the rows
        stay, and an aggregator's outbox sweep publishes them: the run goes on."""
        try:
            await self.relay.publish(outbox_ids)
        except BrokerError as exc:
            log.warning("run %s: publishing deferred to the outbox sweep: %s", run_id, exc)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # published, but the rows could not be marked: the sweep publishes them again
            log.warning("run %s: outbox rows left to the sweep: %r", run_id, exc)


@contextlib.asynccontextmanager
async def open_trigger(settings: Settings, *, max_request_bytes: int) -> AsyncIterator[Trigger]:
    """Open the store (migrating it), connect and declare the topology, subscribe to events."""
    topology = settings.topology()
    limits = settings.limits()
    async with contextlib.AsyncExitStack() as stack:
        store = await Store.open(settings.database_url)
        stack.push_async_callback(store.close)
        broker = AmqpBroker(settings.amqp_url, topology=topology, connection_name="fanflow-trigger")
        await broker.connect()
        stack.push_async_callback(broker.close)
        await broker.declare()
        events = RunEvents(await broker.subscribe_events())
        events.start()
        stack.push_async_callback(events.close)
        imports = ImportChecker()
        imports.start()
        stack.callback(imports.close)
        trigger = Trigger(
            settings=settings,
            store=store,
            broker=broker,
            driver=RunDriver(store, topology, limits=limits),
            relay=OutboxRelay(store, broker),
            events=events,
            max_request_bytes=max_request_bytes,
            imports=imports,
        )
        stack.push_async_callback(_cancel_background, trigger)
        yield trigger


async def _cancel_background(trigger: Trigger) -> None:
    tasks = list(trigger.background)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


def get_trigger(request: Request) -> Trigger:
    """FastAPI dependency: the process's Trigger (set by the lifespan)."""
    trigger: Trigger = request.app.state.trigger
    return trigger
