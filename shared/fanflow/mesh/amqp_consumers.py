"""The consumer side of the RabbitMQ transport: consumers, subscriptions, settling.

Part of the AMQP transport (`fanflow.mesh.amqp` starts these on its channels); only amqp*.py
modules import aio_pika. `_settle` is the one place where a delivery is acknowledged,
requeued or dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    DeliveryMode,
)

from fanflow.mesh.topology import Topology
from fanflow.mesh.transport import (
    BatchHandler,
    BrokerError,
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

# the transport's logger, as before the split: log settings that name it keep working
log = logging.getLogger("fanflow.mesh.amqp")

T = TypeVar("T")


@contextmanager
def broker_errors(what: str) -> Iterator[None]:
    """aiormq's errors as `BrokerError`, naming `what` was being done."""
    try:
        yield
    except aiormq.exceptions.AMQPError as exc:
        raise BrokerError(f"{what}: {exc}") from exc


async def _settle(message: AbstractIncomingMessage, disposition: Disposition) -> None:
    """The one place where fanflow acknowledges, requeues or dead-letters a delivery
    (`_settle_batch` acknowledges a whole batch with one frame)."""
    try:
        if disposition is Disposition.ACK:
            await message.ack()
        elif disposition is Disposition.REQUEUE:
            await message.nack(requeue=True)
        else:
            await message.reject(requeue=False)
    except (aiormq.exceptions.AMQPError, RuntimeError) as exc:
        # the channel is gone, and with it the delivery: the broker redelivers it
        log.warning("could not %s message %s: %r", disposition.value, message.message_id, exc)


async def _settle_batch(
    messages: list[AbstractIncomingMessage], dispositions: list[Disposition]
) -> None:
    """Settle a batch: one `multiple` ack when every delivery is acknowledged.

    Valid because a batch consumer settles its batches in order before taking the next:
    no delivery of its channel older than the batch's newest (the last received) is still
    unsettled. After a reconnect, deliveries of the old channel are redelivered anyway.
    """
    if len(messages) > 1 and all(d is Disposition.ACK for d in dispositions):
        try:
            await messages[-1].ack(multiple=True)
        except (aiormq.exceptions.AMQPError, RuntimeError) as exc:
            log.warning("could not ack %d messages: %r", len(messages), exc)
        return
    for message, disposition in zip(messages, dispositions, strict=True):
        await _settle(message, disposition)


def _delivery(message: AbstractIncomingMessage) -> Delivery:
    headers = dict(message.headers or {})
    count = headers.get("x-delivery-count")
    return Delivery(
        body=message.body,
        headers=headers,
        redelivered=bool(message.redelivered),
        message_id=message.message_id,
        routing_key=message.routing_key,
        persistent=message.delivery_mode == DeliveryMode.PERSISTENT,
        delivery_count=count if isinstance(count, int) else int(bool(message.redelivered)),
    )


class Consumer:
    """One running consumer of one queue, on its own channel (its prefetch is the channel's)."""

    def __init__(self, queue_name: str) -> None:
        self.queue_name = queue_name
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._stopping = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def closed(self) -> bool:
        """No longer receiving: stopped, or its channel is gone (until it reconnects)."""
        return self._stopping or self._channel is None or self._channel.is_closed

    @property
    def in_flight(self) -> int:
        """Deliveries received and not yet settled."""
        return self._in_flight

    async def start(self, channel: AbstractRobustChannel, queue: AbstractQueue) -> None:
        self._channel, self._queue = channel, queue
        self._tag = await queue.consume(self._on_message)

    async def stop(self, *, timeout_s: float | None = 30.0) -> None:
        """Stop receiving, wait until in-flight deliveries are settled, close the channel.

        Whatever is still unsettled after timeout_s goes back to the queue.
        """
        if not self._stopping:
            self._stopping = True
            if self._queue is not None and self._tag is not None:
                try:
                    await self._queue.cancel(self._tag)
                except (aiormq.exceptions.AMQPError, RuntimeError) as exc:
                    log.warning("could not cancel consumer of %s: %r", self.queue_name, exc)
            self._on_stop()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning(
                "%s: %d deliveries unsettled at drain deadline", self.queue_name, self._in_flight
            )
        self._halt()
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    def abandon(self) -> None:
        """Take no new deliveries; unsettled ones return to the queue with the channel."""
        if not self._stopping:
            self._stopping = True
            self._on_stop()
        self._halt()

    def _on_stop(self) -> None:
        pass

    def _halt(self) -> None:
        pass

    def _begin(self, count: int) -> None:
        self._in_flight += count
        self._idle.clear()

    def _end(self, count: int) -> None:
        self._in_flight -= count
        if not self._in_flight:
            self._idle.set()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        raise NotImplementedError


class SingleConsumer(Consumer):
    def __init__(self, queue_name: str, handler: Handler) -> None:
        super().__init__(queue_name)
        self.handler = handler

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aiormq runs each delivery in its own task: up to `prefetch` handlers at once
        if self._stopping:
            return  # not settled: back to the queue when the channel closes
        self._begin(1)
        try:
            await _settle(message, await self._dispose(message))
        finally:
            self._end(1)

    async def _dispose(self, message: AbstractIncomingMessage) -> Disposition:
        return await handle_one(self.handler, self.queue_name, _delivery(message))


class BatchConsumer(Consumer):
    def __init__(
        self, queue_name: str, handler: BatchHandler, batch_size: int, max_wait_s: float
    ) -> None:
        super().__init__(queue_name)
        self.handler = handler
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        #: None marks the end: everything before it was received before the stop
        self._buffer: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self, channel: AbstractRobustChannel, queue: AbstractQueue) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name=f"batches:{self.queue_name}")
        await super().start(channel, queue)

    def _on_stop(self) -> None:
        self._buffer.put_nowait(None)

    def _halt(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            return
        self._begin(1)
        self._buffer.put_nowait(message)

    async def _loop(self) -> None:
        while (first := await self._buffer.get()) is not None:
            batch, ended = await take_batch(
                self._buffer,
                first,
                batch_size=self.batch_size,
                max_wait_s=self.max_wait_s,
                more_ready=self._more_ready,
            )
            try:
                deliveries = [_delivery(m) for m in batch]
                dispositions = await handle_batch(self.handler, self.queue_name, deliveries)
                await _settle_batch(batch, dispositions)
            finally:
                self._end(len(batch))
            if ended:
                return

    async def _more_ready(self) -> bool:
        """Whether the queue holds ready messages not yet delivered to us (one passive
        declare); when that cannot be told, True: the batch waits out its window."""
        if self._channel is None or self._channel.is_closed:
            return True
        try:
            channel = await self._channel.get_underlay_channel()
            declared = await channel.queue_declare(self.queue_name, passive=True)
        except (aiormq.exceptions.AMQPError, RuntimeError) as exc:
            log.debug("could not count the ready messages of %s: %r", self.queue_name, exc)
            return True
        return bool(declared.message_count)


class Subscription(ItemStream[T]):
    """An async iterator over a private, auto-deleted queue (no acks: losing one on a
    crash is fine, the queue goes with its process)."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: AbstractQueue | None = None
        self.exchange = ""

    async def close(self) -> None:
        """End the iteration and delete the private queue."""
        if self.queue is not None and not self.queue.channel.is_closed:
            await self.queue.channel.close()
        self.finish()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            items = self._parse_all(message)
        except ValueError as exc:
            log.warning("dropping malformed message on %s: %s", self.exchange, exc)
            return
        for item in items:
            self._items.put_nowait(item)

    def _parse_all(self, message: AbstractIncomingMessage) -> list[T]:
        return [self._parse(message)]

    def _parse(self, message: AbstractIncomingMessage) -> T:
        raise NotImplementedError

    def _queue(self) -> AbstractQueue:
        if self.queue is None:
            raise RuntimeError("subscription not started")
        return self.queue


class EventSubscription(Subscription[Event]):
    """Run events for the runs bound with `bind(run_id)` (and the initial pattern)."""

    def __init__(self, topology: Topology) -> None:
        super().__init__()
        self.topology = topology

    async def bind(self, run_id: str) -> None:
        with broker_errors(f"binding events of run {run_id!r}"):
            await self._queue().bind(self.exchange, self.topology.event_pattern(run_id))

    async def unbind(self, run_id: str) -> None:
        with broker_errors(f"unbinding events of run {run_id!r}"):
            await self._queue().unbind(self.exchange, self.topology.event_pattern(run_id))

    def _parse_all(self, message: AbstractIncomingMessage) -> list[Event]:
        return parse_events(self.topology, message.routing_key or "", message.body)


class ControlSubscription(Subscription[dict[str, Any]]):
    """Control broadcasts (e.g. ``{"stop_run": run_id}``) as dicts."""

    def _parse(self, message: AbstractIncomingMessage) -> dict[str, Any]:
        return json_object(message.body)
