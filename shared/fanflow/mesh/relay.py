"""Publishing the outbox: after commit, with publisher confirms; rows go once confirmed."""

from __future__ import annotations

import asyncio
import logging

from fanflow.amqp import AmqpBroker
from fanflow.mesh.driver import KIND_CONTROL, KIND_EVENT, KIND_TASK
from fanflow.store import OutboxMessage, Store

log = logging.getLogger(__name__)


class OutboxRelay:
    """Moves committed outbox rows to the broker. Several relays at once only duplicate
    messages (consumers dedupe on message ids), never lose them."""

    def __init__(self, store: Store, broker: AmqpBroker, *, batch: int = 200) -> None:
        self.store = store
        self.broker = broker
        self.batch = batch
        self._lock = asyncio.Lock()

    async def publish_run(self, run_id: str) -> int:
        """Publish everything pending for one run (called right after its commit)."""
        return await self._drain(run_id)

    async def sweep(self) -> int:
        """Publish everything pending, whoever wrote it (recovery after a crash)."""
        return await self._drain(None)

    async def _drain(self, run_id: str | None) -> int:
        published = 0
        async with self._lock:
            while True:
                rows = await self.store.pending_outbox(limit=self.batch, run_id=run_id)
                if not rows:
                    return published
                for _, message in rows:
                    await self._publish(message)
                await self.store.mark_published([row_id for row_id, _ in rows])
                published += len(rows)

    async def _publish(self, message: OutboxMessage) -> None:
        topology = self.broker.topology
        if message.kind == KIND_TASK:
            await self.broker.publish_raw(
                topology.tasks_exchange,
                message.routing,
                message.body,
                message_id=message.message_id,
                headers=message.headers,
                delay_ms=message.delay_ms,
            )
        elif message.kind == KIND_EVENT:
            await self.broker.publish_raw(
                topology.events_exchange,
                message.routing,
                message.body,
                message_id=message.message_id,
                persistent=False,
                mandatory=False,
            )
        elif message.kind == KIND_CONTROL:
            await self.broker.publish_raw(
                topology.control_exchange,
                "",
                message.body,
                message_id=message.message_id,
                persistent=False,
                mandatory=False,
            )
        else:
            log.error(
                "dropping outbox message %s of unknown kind %r", message.message_id, message.kind
            )
