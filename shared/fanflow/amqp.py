"""The RabbitMQ transport: the only module that imports aio_pika.

`AmqpBroker` publishes with publisher confirms (mandatory publishes raise `Unroutable`),
declares `fanflow.topology`, and runs consumers whose handlers never see AMQP: a handler
gets the body, the headers and the redelivered flag, and returns a `Disposition`; the
consumer loop (`_settle`, the one place) acks, requeues or rejects to the dead-letter
exchange accordingly.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    DeliveryMode,
)

from fanflow.errors import DecodeError, FanflowError
from fanflow.messages import NodeTask, TaskResult
from fanflow.topology import QueueSpec, Topology

log = logging.getLogger(__name__)

T = TypeVar("T")


class Disposition(enum.Enum):
    """What the consumer loop does with a delivery once its handler is done."""

    ACK = "ack"
    #: back to the queue; the quorum delivery limit bounds how often
    REQUEUE = "requeue"
    #: to the dead-letter exchange, no redelivery
    REJECT = "reject"


@dataclass(frozen=True)
class Delivery:
    """One message as a batch handler sees it."""

    body: bytes
    headers: Mapping[str, Any]
    redelivered: bool
    message_id: str | None
    routing_key: str | None
    persistent: bool
    #: deliveries before this one (quorum queues' x-delivery-count; 0 the first time)
    delivery_count: int


@dataclass(frozen=True)
class Event:
    run_id: str
    name: str
    payload: dict[str, Any]


Handler = Callable[[bytes, dict[str, Any], bool], Awaitable[Disposition]]
BatchHandler = Callable[[list[Delivery]], Awaitable[Sequence[Disposition]]]


class BrokerError(FanflowError):
    """RabbitMQ refused an operation (missing queue, queue declared with other arguments,
    connection lost); the text names the operation."""


class PublishFailed(BrokerError):
    """The broker did not confirm a publish (nack, channel or connection lost, timeout).

    The message may or may not have been stored: retry with the same message_id.
    """


class Unroutable(PublishFailed):
    """A mandatory publish matched no queue (missing binding or queue)."""


class AmqpBroker:
    """A robust connection to RabbitMQ with a confirming publisher and fanflow's consumers.

    Use as ``async with AmqpBroker(url, topology=...) as broker``. Call `declare()` once
    at startup (idempotent); `drain()` on SIGTERM, `close()` otherwise.
    """

    def __init__(
        self,
        url: str,
        *,
        topology: Topology | None = None,
        connection_name: str = "fanflow",
        publish_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.topology = topology or Topology()
        self.connection_name = connection_name
        self.publish_timeout_s = publish_timeout_s
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._admin: AbstractRobustChannel | None = None
        self._consumers: list[Consumer] = []
        self._subscriptions: list[_Subscription[Any]] = []
        self._delay_queues: set[str] = set()

    async def __aenter__(self) -> AmqpBroker:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        try:
            self._connection = await aio_pika.connect_robust(
                self.url, client_properties={"connection_name": self.connection_name}
            )
        except (OSError, aiormq.exceptions.AMQPError) as exc:
            where = urlsplit(self.url)
            raise BrokerError(
                f"cannot connect to RabbitMQ at {where.hostname}:{where.port or 5672}: {exc!r}"
            ) from exc
        self._publisher = await self._channel(publisher_confirms=True, on_return_raises=True)
        self._admin = await self._channel(publisher_confirms=False)

    # -- topology -----------------------------------------------------------------------

    async def declare(self) -> None:
        """Declare every exchange, queue and binding of the topology (idempotent)."""
        channel = self._require(self._admin)
        with _broker_errors(f"declaring the {self.topology.namespace!r} topology"):
            for exchange in self.topology.exchanges():
                await channel.declare_exchange(
                    exchange.name, exchange.type, durable=exchange.durable, robust=False
                )
            queues = self.topology.queues()
            declared = {spec.name: await self._declare_queue(spec) for spec in queues}
            for binding in self.topology.bindings():
                await declared[binding.queue].bind(binding.exchange, binding.routing_key)

    async def delete_topology(self, *, extra_queues: Iterable[str] = ()) -> None:
        """Delete the topology's queues (messages included) and exchanges, the delay queues
        this broker used and `extra_queues` (tests, teardown tools)."""
        channel = self._require(self._admin)
        names = [q.name for q in self.topology.queues()]
        names += sorted(self._delay_queues | set(extra_queues))
        with _broker_errors(f"deleting the {self.topology.namespace!r} topology"):
            for name in names:
                await channel.queue_delete(name)
            for exchange in self.topology.exchanges():
                await channel.exchange_delete(exchange.name)
        self._delay_queues.clear()

    @property
    def delay_queues(self) -> frozenset[str]:
        """The delay queues this broker has published to (they expire by themselves)."""
        return frozenset(self._delay_queues)

    async def message_count(self, queue_name: str) -> int:
        """Messages ready in a queue (not counting unacknowledged ones)."""
        channel = self._require(self._admin)
        with _broker_errors(f"counting messages in queue {queue_name!r}"):
            declared = await channel.declare_queue(queue_name, passive=True, robust=False)
        count = declared.declaration_result.message_count
        return int(count or 0)

    # -- publishing -----------------------------------------------------------------------

    async def publish_task(self, task: NodeTask, *, delay_ms: int = 0) -> None:
        """Publish a node task to its class queue, or to its delay queue when delay_ms > 0."""
        route = self.topology.task_route(task.node_type)
        await self.publish_raw(
            route.exchange,
            route.routing_key,
            task.encode(),
            message_id=self.topology.task_message_id(task),
            headers=self.topology.task_headers(task),
            delay_ms=delay_ms,
        )

    async def publish_result(self, result: TaskResult) -> None:
        route = self.topology.result_route()
        await self.publish_raw(
            route.exchange,
            route.routing_key,
            result.encode(),
            message_id=self.topology.result_message_id(result.task_id),
            headers=self.topology.result_headers(result),
        )

    async def publish_event(self, run_id: str, event_name: str, payload: dict[str, Any]) -> None:
        """Publish a run event; nobody listening is fine (not mandatory, not persistent)."""
        route = self.topology.event_route(run_id, event_name)
        await self.publish_raw(
            route.exchange,
            route.routing_key,
            json.dumps(payload).encode(),
            message_id=None,
            persistent=False,
            mandatory=False,
        )

    async def publish_control(self, payload: dict[str, Any]) -> None:
        """Broadcast to every worker's control subscription (no workers is fine)."""
        route = self.topology.control_route()
        await self.publish_raw(
            route.exchange,
            route.routing_key,
            json.dumps(payload).encode(),
            message_id=None,
            persistent=False,
            mandatory=False,
        )

    async def publish_raw(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None,
        headers: Mapping[str, Any] | None = None,
        persistent: bool = True,
        delay_ms: int = 0,
        mandatory: bool = True,
    ) -> None:
        """Publish and wait for the broker's confirm; raises `Unroutable` / `PublishFailed`.

        ``exchange`` "" is the default exchange. A delay is only for the tasks exchange:
        the message waits in the class's delay queue, which then routes it on.
        """
        channel = self._require(self._publisher)
        if delay_ms:
            if exchange != self.topology.tasks_exchange:
                raise ValueError(f"only tasks can be delayed, not messages to {exchange!r}")
            spec = self.topology.delay_queue_spec(routing_key, delay_ms)
            # redeclared on every use: that renews the queue's x-expires lease
            with _broker_errors(f"declaring delay queue {spec.name!r}"):
                await self._declare_queue(spec)
            self._delay_queues.add(spec.name)
            exchange, routing_key = "", spec.name
        message = aio_pika.Message(
            body,
            headers=dict(headers or {}),
            content_type="application/json",
            delivery_mode=DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT,
            message_id=message_id,
        )
        try:
            target = (
                channel.default_exchange
                if exchange == ""
                else await channel.get_exchange(exchange, ensure=False)
            )
            await target.publish(
                message, routing_key, mandatory=mandatory, timeout=self.publish_timeout_s
            )
        except aiormq.exceptions.PublishError as exc:
            raise Unroutable(
                f"no queue for {routing_key!r} on exchange {exchange or '(default)'!r}"
            ) from exc
        except (TimeoutError, aiormq.exceptions.AMQPError, RuntimeError) as exc:
            raise PublishFailed(
                f"publish to {exchange or '(default)'!r}/{routing_key!r} not confirmed: {exc!r}"
            ) from exc

    # -- consuming ------------------------------------------------------------------------

    async def consume(self, queue_name: str, handler: Handler, *, prefetch: int) -> Consumer:
        """Run `handler` on every delivery of a queue, at most `prefetch` at a time.

        DecodeError from the handler rejects to the dead-letter exchange; any other
        exception requeues (bounded by the queue's delivery limit).
        """
        consumer = _SingleConsumer(queue_name, handler)
        await self._start(consumer, prefetch)
        return consumer

    async def consume_batches(
        self,
        queue_name: str,
        handler: BatchHandler,
        *,
        batch_size: int,
        max_wait_s: float,
        prefetch: int | None = None,
    ) -> Consumer:
        """Hand deliveries to `handler` in batches of up to `batch_size`, waiting at most
        `max_wait_s` after the first one; the handler returns one Disposition per delivery.

        Batches run one at a time. When the handler raises on a batch, each delivery is
        retried alone, so one poison message does not spend its batch-mates' deliveries.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        consumer = _BatchConsumer(queue_name, handler, batch_size, max_wait_s)
        await self._start(consumer, prefetch or 2 * batch_size)
        return consumer

    async def subscribe_events(self, pattern: str | None = None) -> EventSubscription:
        """A private queue on the events exchange; `bind(run_id)` adds a run's events.

        `pattern` is an optional raw topic binding (``run.*.*`` for every run).
        """
        subscription = EventSubscription(self.topology)
        await self._subscribe(subscription, self.topology.events_exchange, pattern)
        return subscription

    async def subscribe_control(self) -> ControlSubscription:
        """A private queue on the control fanout: every broadcast reaches every subscriber."""
        subscription = ControlSubscription()
        await self._subscribe(subscription, self.topology.control_exchange, "")
        return subscription

    # -- shutting down --------------------------------------------------------------------

    async def drain(self, *, timeout_s: float | None = 30.0) -> None:
        """Stop consuming, let in-flight handlers finish (up to timeout_s), then close.

        Deliveries still unsettled at the deadline return to their queue.
        """
        stops = [consumer.stop(timeout_s=timeout_s) for consumer in self._consumers]
        await asyncio.gather(*stops, return_exceptions=True)
        await self.close()

    async def close(self) -> None:
        for subscription in self._subscriptions:
            subscription.finish()
        self._subscriptions.clear()
        for consumer in self._consumers:
            consumer.abandon()
        self._consumers.clear()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    # -- internals --------------------------------------------------------------------------

    async def _channel(self, **options: Any) -> AbstractRobustChannel:
        connection = self._require(self._connection)
        channel = await connection.channel(**options)
        assert isinstance(channel, AbstractRobustChannel)
        return channel

    @staticmethod
    def _require(thing: T | None) -> T:
        if thing is None:
            raise RuntimeError("AmqpBroker is not connected: use `async with AmqpBroker(...)`")
        return thing

    async def _declare_queue(self, spec: QueueSpec) -> AbstractQueue:
        return await self._require(self._admin).declare_queue(
            spec.name, durable=spec.durable, arguments=dict(spec.arguments), robust=False
        )

    async def _start(self, consumer: Consumer, prefetch: int) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        channel = await self._channel()
        try:
            with _broker_errors(f"consuming queue {consumer.queue_name!r}"):
                await channel.set_qos(prefetch_count=prefetch)
                queue = await channel.get_queue(consumer.queue_name, ensure=True)
                await consumer.start(channel, queue)
        except BaseException:
            consumer.abandon()
            await channel.close()
            raise
        self._consumers.append(consumer)

    async def _subscribe(
        self, subscription: _Subscription[Any], exchange: str, pattern: str | None
    ) -> None:
        channel = await self._channel()
        with _broker_errors(f"subscribing to exchange {exchange!r}"):
            # aio-pika names it amq_<random> itself, so a reconnect can redeclare it
            queue = await channel.declare_queue(None, exclusive=True, auto_delete=True)
            subscription.queue, subscription.exchange = queue, exchange
            if pattern is not None:
                await queue.bind(exchange, pattern)
            await queue.consume(subscription.on_message, no_ack=True)
        self._subscriptions.append(subscription)


@contextmanager
def _broker_errors(what: str) -> Iterator[None]:
    try:
        yield
    except aiormq.exceptions.AMQPError as exc:
        raise BrokerError(f"{what}: {exc}") from exc


async def _settle(message: AbstractIncomingMessage, disposition: Disposition) -> None:
    """The one place where fanflow acknowledges, requeues or dead-letters a delivery."""
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


def _failure(exc: Exception, where: str) -> Disposition:
    if isinstance(exc, DecodeError):
        log.warning("%s: undecodable message, dead-lettering it: %s", where, exc)
        return Disposition.REJECT
    log.error("%s: handler failed, requeueing", where, exc_info=exc)
    return Disposition.REQUEUE


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


class _SingleConsumer(Consumer):
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
        where = f"{self.queue_name} message {message.message_id}"
        try:
            headers = dict(message.headers or {})
            disposition = await self.handler(message.body, headers, bool(message.redelivered))
            if not isinstance(disposition, Disposition):
                raise TypeError(f"handler returned {disposition!r}, not a Disposition")
        except Exception as exc:
            return _failure(exc, where)
        return disposition


class _BatchConsumer(Consumer):
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
        loop = asyncio.get_running_loop()
        while (first := await self._buffer.get()) is not None:
            batch, deadline, ended = [first], loop.time() + self.max_wait_s, False
            while len(batch) < self.batch_size:
                try:
                    item = await asyncio.wait_for(self._buffer.get(), deadline - loop.time())
                except TimeoutError:
                    break
                if item is None:
                    ended = True
                    break
                batch.append(item)
            try:
                dispositions = await self._dispose([_delivery(m) for m in batch])
                for message, disposition in zip(batch, dispositions, strict=True):
                    await _settle(message, disposition)
            finally:
                self._end(len(batch))
            if ended:
                return

    async def _dispose(self, deliveries: list[Delivery]) -> list[Disposition]:
        try:
            dispositions = list(await self.handler(deliveries))
            if len(dispositions) != len(deliveries) or not all(
                isinstance(d, Disposition) for d in dispositions
            ):
                raise TypeError(
                    f"batch handler returned {dispositions!r} for {len(deliveries)} deliveries"
                )
        except Exception as exc:
            if len(deliveries) == 1:
                return [_failure(exc, f"{self.queue_name} message {deliveries[0].message_id}")]
            log.warning(
                "%s: batch of %d failed (%r); retrying each delivery alone",
                self.queue_name,
                len(deliveries),
                exc,
            )
            return [d for one in deliveries for d in await self._dispose([one])]
        return dispositions


class _Subscription(Generic[T]):
    """An async iterator over a private, auto-deleted queue (no acks: losing one on a
    crash is fine, the queue goes with its process)."""

    def __init__(self) -> None:
        self.queue: AbstractQueue | None = None
        self.exchange = ""
        self._items: asyncio.Queue[T | None] = asyncio.Queue()
        self._finished = False

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._finished and self._items.empty():
            raise StopAsyncIteration
        item = await self._items.get()
        if item is None:
            self._finished = True
            raise StopAsyncIteration
        return item

    async def close(self) -> None:
        """End the iteration and delete the private queue."""
        if self.queue is not None and not self.queue.channel.is_closed:
            await self.queue.channel.close()
        self.finish()

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._items.put_nowait(None)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            item = self._parse(message)
        except ValueError as exc:
            log.warning("dropping malformed message on %s: %s", self.exchange, exc)
            return
        self._items.put_nowait(item)

    def _parse(self, message: AbstractIncomingMessage) -> T:
        raise NotImplementedError

    def _queue(self) -> AbstractQueue:
        if self.queue is None:
            raise RuntimeError("subscription not started")
        return self.queue


def _json_object(body: bytes) -> dict[str, Any]:
    payload = json.loads(body)
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object, got {type(payload).__name__}")
    return payload


class EventSubscription(_Subscription[Event]):
    """Run events for the runs bound with `bind(run_id)` (and the initial pattern)."""

    def __init__(self, topology: Topology) -> None:
        super().__init__()
        self.topology = topology

    async def bind(self, run_id: str) -> None:
        with _broker_errors(f"binding events of run {run_id!r}"):
            await self._queue().bind(self.exchange, self.topology.event_pattern(run_id))

    async def unbind(self, run_id: str) -> None:
        with _broker_errors(f"unbinding events of run {run_id!r}"):
            await self._queue().unbind(self.exchange, self.topology.event_pattern(run_id))

    def _parse(self, message: AbstractIncomingMessage) -> Event:
        run_id, name = self.topology.parse_event_key(message.routing_key or "")
        return Event(run_id, name, _json_object(message.body))


class ControlSubscription(_Subscription[dict[str, Any]]):
    """Control broadcasts (e.g. ``{"stop_run": run_id}``) as dicts."""

    def _parse(self, message: AbstractIncomingMessage) -> dict[str, Any]:
        return _json_object(message.body)
