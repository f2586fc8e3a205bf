"""Publishing the outbox: after commit, with publisher confirms; rows go once confirmed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from fanflow.mesh.amqp import AmqpBroker, BrokerError
from fanflow.mesh.driver import KIND_CONTROL, KIND_EVENT, KIND_TASK
from fanflow.store import OutboxMessage, Store

log = logging.getLogger(__name__)


class OutboxRelay:
    """Moves committed outbox rows to the broker. Several relays at once only duplicate
    messages (consumers dedupe on message ids), never lose them."""

    #: a recovery sweep leaves rows younger than this to the process that wrote them
    SWEEP_GRACE_S = 10.0

    def __init__(self, store: Store, broker: AmqpBroker, *, batch: int = 200) -> None:
        self.store = store
        self.broker = broker
        self.batch = batch
        self._lock = asyncio.Lock()

    async def publish(self, ids: Sequence[int]) -> int:
        """Publish the rows a transaction just committed (the ids it returned)."""
        published = 0
        for start in range(0, len(ids), self.batch):
            chunk = list(ids[start : start + self.batch])
            published += await self._publish_rows(
                await self.store.pending_outbox(limit=len(chunk), ids=chunk)
            )
        return published

    async def sweep(self, *, grace_s: float | None = None) -> int:
        """Publish rows left behind by a process that died between commit and publish."""
        grace = self.SWEEP_GRACE_S if grace_s is None else grace_s
        published = 0
        while True:
            rows = await self.store.pending_outbox(
                limit=self.batch, created_before=time.time() - grace
            )
            if not rows:
                return published
            published += await self._publish_rows(rows)

    async def _publish_rows(self, rows: list[tuple[int, OutboxMessage]]) -> int:
        done: list[int] = []
        async with self._lock:
            try:
                for row_id, message in rows:
                    try:
                        await self._publish(message)
                    except BrokerError:
                        raise  # the broker is away: the rows stay for the next try
                    except Exception:
                        # a row that can never be published must not block the others
                        log.exception(
                            "dropping outbox message %s: cannot publish it", message.message_id
                        )
                    done.append(row_id)
            finally:
                if done:
                    await self.store.mark_published(done)
        return len(done)

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
