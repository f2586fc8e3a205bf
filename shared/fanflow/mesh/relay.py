"""Publishing the outbox: after commit, pipelined with publisher confirms; rows go once confirmed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from fanflow.mesh.driver import KIND_CONTROL, KIND_EVENT, KIND_TASK, Committed
from fanflow.mesh.topology import Topology
from fanflow.mesh.transport import (
    EVENT_BATCH,
    Broker,
    BrokerError,
    Publish,
    Unroutable,
    batch_body,
)
from fanflow.metrics import OUTBOX_PARKED, OUTBOX_PUBLISHED
from fanflow.store import OutboxMessage, Store

log = logging.getLogger(__name__)

#: what to do with a committed message no queue routes (a task for a class nothing
#: serves): fail what it was for. Returns normally once that is durable; the row is then
#: removed. Raising leaves the row for the next sweep.
ParkHandler = Callable[[OutboxMessage, Unroutable], Awaitable[None]]


class OutboxRelay:
    """Moves committed outbox rows to the broker. Several relays at once only duplicate
    messages (consumers dedupe on message ids), never lose them.

    A batch of messages is published at once: every publish is written to the channel
    before any confirm is awaited, then the confirms are awaited together, and the rows
    confirmed are deleted with one statement.
    """

    #: a recovery sweep leaves rows younger than this to the process that wrote them
    SWEEP_GRACE_S = 10.0

    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        batch: int = 500,
        on_unroutable: ParkHandler | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.batch = batch
        #: without one (the trigger), an unroutable row stays for an aggregator's sweep
        self.on_unroutable = on_unroutable
        self._lock = asyncio.Lock()

    async def publish(self, ids: Sequence[int]) -> int:
        """Publish what a transaction just committed: a `Committed` (its rows and its
        best-effort events, as written) or plain outbox ids (read back from the store)."""
        if isinstance(ids, Committed):
            entries = self._batch_events(ids.messages)
        else:
            entries = []
            for start in range(0, len(ids), self.batch):
                chunk = list(ids[start : start + self.batch])
                entries += await self.store.pending_outbox(limit=len(chunk), ids=chunk)
        published = 0
        for start in range(0, len(entries), self.batch):
            published += await self._publish_rows(entries[start : start + self.batch])
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
            handled = await self._publish_rows(list(rows))
            published += handled
            if handled < len(rows):
                return published  # the rest waits for the next sweep, not a busy loop

    async def _publish_rows(self, rows: Sequence[tuple[int | None, OutboxMessage]]) -> int:
        """Publish `(row id or None, message)`s in order; mark the rows done that were
        confirmed (or can never be published: an unroutable one is parked). A broker
        failure leaves its rows for the next try and is raised once the others are
        marked; so does an unroutable row that could not be parked, without raising."""
        done: list[int] = []
        handled = 0
        failure: BrokerError | None = None
        unroutable: list[tuple[int | None, OutboxMessage, Unroutable]] = []
        async with self._lock:
            try:
                publications = [self._publication(m) for _, m in rows]
                sent = iter(await self.broker.publish_many([p for p in publications if p]))
                outcomes = [
                    next(sent) if p else ValueError("unknown message kind") for p in publications
                ]
                for (row_id, message), error in zip(rows, outcomes, strict=True):
                    if error is None:
                        OUTBOX_PUBLISHED.labels(message.kind).inc()
                    elif isinstance(error, Unroutable):
                        unroutable.append((row_id, message, error))
                        continue  # parked below, outside the lock (the handler publishes)
                    elif isinstance(error, BrokerError):
                        failure = failure or error  # the broker is away: the row stays
                        continue
                    else:
                        # a row that can never be published must not block the others
                        log.error(
                            "dropping outbox message %s: cannot publish it: %r",
                            message.message_id,
                            error,
                        )
                    handled += 1
                    if row_id is not None:
                        done.append(row_id)
            finally:
                if done:
                    await self.store.mark_published(done)
        for row_id, message, error in unroutable:
            if await self._park(message, error):  # else the row stays for a later sweep
                handled += 1
                if row_id is not None:
                    await self.store.mark_published([row_id])
        if failure is not None:
            raise failure
        return handled

    async def _park(self, message: OutboxMessage, error: Unroutable) -> bool:
        """Hand an unroutable message to `on_unroutable`; True once it is parked."""
        if self.on_unroutable is None:
            log.warning(
                "outbox message %s is unroutable (%s): left to the sweep", message.message_id, error
            )
            return False
        try:
            await self.on_unroutable(message, error)
        except Exception:
            log.exception(
                "parking unroutable outbox message %s failed; retried later", message.message_id
            )
            return False
        OUTBOX_PARKED.labels(message.kind).inc()
        log.error("parked outbox message %s: %s", message.message_id, error)
        return True

    def _batch_events(
        self, entries: Sequence[tuple[int | None, OutboxMessage]]
    ) -> list[tuple[int | None, OutboxMessage]]:
        """A run's best-effort events (no row) become one message, at the place of the
        first. Events keep their order among themselves and with the durable events (a
        durable event ends a batch); tasks and controls may pass events, nobody sees both."""
        topology = self.broker.topology
        batched: list[tuple[int | None, OutboxMessage]] = []
        pending: list[OutboxMessage] = []
        slot = 0

        def close() -> None:
            if len(pending) > 1:
                run_id, _ = topology.parse_event_key(pending[0].routing)
                batched[slot] = (
                    None,
                    OutboxMessage(
                        kind=KIND_EVENT,
                        routing=topology.event_route(run_id, EVENT_BATCH).routing_key,
                        body=batch_body([m.body for m in pending]),
                        message_id=f"{pending[0].message_id}+{len(pending) - 1}",
                    ),
                )
            pending.clear()

        for row_id, message in entries:
            if message.kind != KIND_EVENT:
                batched.append((row_id, message))
                continue
            if row_id is not None or (pending and _run_of(pending[0]) != _run_of(message)):
                close()
            if row_id is not None:
                batched.append((row_id, message))
                continue
            if not pending:
                slot = len(batched)
                batched.append((None, message))
            pending.append(message)
        close()
        return batched

    def _publication(self, message: OutboxMessage) -> Publish | None:
        topology = self.broker.topology
        # tasks are durable and must reach a queue; events and controls may reach nobody
        exchanges: dict[str, str] = {
            KIND_TASK: topology.tasks_exchange,
            KIND_EVENT: topology.events_exchange,
            KIND_CONTROL: topology.control_exchange,
        }
        exchange = exchanges.get(message.kind)
        if exchange is None:
            log.error("outbox message %s has an unknown kind %r", message.message_id, message.kind)
            return None
        task = message.kind == KIND_TASK
        return Publish(
            exchange,
            message.routing if message.kind != KIND_CONTROL else "",
            message.body,
            message_id=message.message_id,
            headers=message.headers if task else None,
            delay_ms=message.delay_ms if task else 0,
            persistent=task,
            mandatory=task,
        )


def _run_of(message: OutboxMessage) -> str:
    return Topology.parse_event_key(message.routing)[0]
