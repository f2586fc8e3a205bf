"""The consumer side of the in-memory broker: messages, consumers, subscriptions.

Part of `fanflow.mesh.memory`; the broker routes, these hand deliveries to handlers and give
the broker back a disposition (`MemoryBroker._settle` is the one place that settles).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from fanflow.mesh.transport import (
    BatchHandler,
    Delivery,
    Disposition,
    Event,
    Handler,
    ItemStream,
    handle_batch,
    handle_one,
    json_object,
    parse_events,
    take_batch,
)

if TYPE_CHECKING:
    from fanflow.mesh.memory import MemoryBroker

log = logging.getLogger("fanflow.mesh.memory")

T = TypeVar("T")


@dataclass(frozen=True)
class MemoryMessage:
    body: bytes
    headers: Mapping[str, Any]
    message_id: str | None
    exchange: str
    routing_key: str
    persistent: bool
    #: times it went back to its queue (quorum queues' x-delivery-count)
    returns: int = 0
    redelivered: bool = False

    def delivery(self) -> Delivery:
        headers = dict(self.headers)
        if self.returns:
            headers["x-delivery-count"] = self.returns
        return Delivery(
            body=self.body,
            headers=headers,
            redelivered=self.redelivered,
            message_id=self.message_id,
            routing_key=self.routing_key,
            persistent=self.persistent,
            delivery_count=self.returns,
        )


class MemoryConsumer:
    """One consumer of one queue with `prefetch` deliveries at most unsettled."""

    def __init__(self, broker: MemoryBroker, queue_name: str, prefetch: int) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = prefetch
        self._unsettled: dict[int, MemoryMessage] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._serial = 0

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def in_flight(self) -> int:
        return len(self._unsettled)

    def has_room(self) -> bool:
        return not self._stopping and len(self._unsettled) < self.prefetch

    def deliver(self, message: MemoryMessage) -> None:
        self._serial += 1
        self._unsettled[self._serial] = message
        self._idle.clear()
        self._received(self._serial, message)

    def _received(self, tag: int, message: MemoryMessage) -> None:
        raise NotImplementedError

    def settle(self, tag: int, disposition: Disposition) -> None:
        message = self._unsettled.pop(tag, None)
        if message is None:
            return  # abandoned meanwhile: it is back in its queue already
        if not self._unsettled:
            self._idle.set()
        self.broker._settle(self.queue_name, message, disposition)
        queue = self.broker._queues.get(self.queue_name)
        if queue is not None:
            self.broker._dispatch(queue)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, *, timeout_s: float | None = 30.0) -> None:
        """Take no new deliveries; wait for in-flight ones; the rest return to the queue."""
        self._stopping = True
        self.broker._detach(self)
        self._on_stop()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("%s: %d deliveries unsettled at drain deadline", self.queue_name,
                        len(self._unsettled))  # fmt: skip
        self.abandon()

    def abandon(self) -> None:
        """As a closed channel: unsettled deliveries go back to their queue, redelivered."""
        self._stopping = True
        self.broker._detach(self)
        for task in self._tasks:
            task.cancel()
        self._on_stop()
        unsettled, self._unsettled = self._unsettled, {}
        self._idle.set()
        queue = self.broker._queues.get(self.queue_name)
        if queue is None:
            return
        for message in unsettled.values():
            queue.ready.appendleft(replace(message, redelivered=True))
        self.broker._dispatch(queue)

    def _on_stop(self) -> None:
        pass


class SingleMemoryConsumer(MemoryConsumer):
    def __init__(
        self, broker: MemoryBroker, queue_name: str, handler: Handler, prefetch: int
    ) -> None:
        super().__init__(broker, queue_name, prefetch)
        self.handler = handler

    def _received(self, tag: int, message: MemoryMessage) -> None:
        self._spawn(self._handle(tag, message))

    async def _handle(self, tag: int, message: MemoryMessage) -> None:
        self.settle(tag, await handle_one(self.handler, self.queue_name, message.delivery()))


class BatchMemoryConsumer(MemoryConsumer):
    def __init__(
        self,
        broker: MemoryBroker,
        queue_name: str,
        handler: BatchHandler,
        prefetch: int,
        batch_size: int,
        max_wait_s: float,
    ) -> None:
        super().__init__(broker, queue_name, prefetch)
        self.handler = handler
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self._buffer: asyncio.Queue[tuple[int, MemoryMessage] | None] = asyncio.Queue()
        self._spawn(self._loop())

    def _received(self, tag: int, message: MemoryMessage) -> None:
        self._buffer.put_nowait((tag, message))

    def _on_stop(self) -> None:
        self._buffer.put_nowait(None)

    async def _loop(self) -> None:
        while (first := await self._buffer.get()) is not None:
            batch, ended = await take_batch(
                self._buffer,
                first,
                batch_size=self.batch_size,
                max_wait_s=self.max_wait_s,
                more_ready=self._more_ready,
            )
            deliveries = [message.delivery() for _, message in batch]
            dispositions = await handle_batch(self.handler, self.queue_name, deliveries)
            for (tag, _), disposition in zip(batch, dispositions, strict=True):
                self.settle(tag, disposition)
            if ended:
                return

    async def _more_ready(self) -> bool:
        """As AMQP's passive declare: whether the queue holds ready messages."""
        queue = self.broker._queues.get(self.queue_name)
        return queue is not None and bool(queue.ready)


class MemorySubscription(ItemStream[T]):
    """An async iterator over a private queue, no acks (as `AmqpBroker`'s)."""

    def __init__(self, broker: MemoryBroker, name: str) -> None:
        super().__init__()
        self.broker = broker
        self.name = name

    def offer(self, message: MemoryMessage) -> None:
        if self._finished:
            return
        try:
            items = self._parse(message)
        except ValueError as exc:
            log.warning("dropping malformed message on %s: %s", message.exchange, exc)
            return
        for item in items:
            self._items.put_nowait(item)

    def _parse(self, message: MemoryMessage) -> list[T]:
        raise NotImplementedError

    async def close(self) -> None:
        self.broker._subscriptions.pop(self.name, None)
        for bindings in self.broker._bindings.values():
            bindings[:] = [b for b in bindings if b[0] != self.name]
        self.finish()


class MemoryEventSubscription(MemorySubscription[Event]):
    async def bind(self, run_id: str) -> None:
        topology = self.broker.topology
        self.broker._bind(topology.events_exchange, self.name, topology.event_pattern(run_id))

    async def unbind(self, run_id: str) -> None:
        topology = self.broker.topology
        self.broker._unbind(topology.events_exchange, self.name, topology.event_pattern(run_id))

    def _parse(self, message: MemoryMessage) -> list[Event]:
        return parse_events(self.broker.topology, message.routing_key, message.body)


class MemoryControlSubscription(MemorySubscription[dict[str, Any]]):
    def _parse(self, message: MemoryMessage) -> list[dict[str, Any]]:
        return [json_object(message.body)]
