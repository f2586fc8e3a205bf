"""What handlers and services see of the message transport, and what both brokers share:
no aio_pika here.

Handlers get a delivery's body, headers and redelivered flag (or a `Delivery`, in batches)
and return a `Disposition`; the consumer loop settles the delivery accordingly. Broker
failures raise `BrokerError` and its subclasses. `AmqpBroker` (RabbitMQ) and `MemoryBroker`
(one process) share their base (`Broker`: typed publishes, batch consumers), the handler policy
(`handle_one`, `handle_batch`), batching (`take_batch`) and event parsing.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from fanflow.errors import DecodeError, FanflowError
from fanflow.mesh.topology import Route, Topology
from fanflow.messages import NodeTask, TaskResult

# the transport's logger: log settings that name it keep working
log = logging.getLogger("fanflow.mesh.amqp")

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


@dataclass(frozen=True, slots=True)
class Publish:
    """One message for `publish_many` (the arguments of `publish_raw`)."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None
    headers: Mapping[str, Any] | None = None
    persistent: bool = True
    delay_ms: int = 0
    mandatory: bool = True


#: the routing-key event name of several events of one run in one message, as
#: `{"events": [event body, ...]}`; subscriptions hand them out one by one
EVENT_BATCH = "batch"


def batch_body(bodies: Sequence[bytes]) -> bytes:
    """One event batch message holding the given event bodies (JSON objects), in order."""
    return b'{"events":[' + b",".join(bodies) + b"]}"


def json_object(body: bytes) -> dict[str, Any]:
    """A message body that must be a JSON object; ValueError otherwise."""
    payload = json.loads(body)
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object, got {type(payload).__name__}")
    return payload


def parse_events(topology: Topology, routing_key: str, body: bytes) -> list[Event]:
    """The events one events-exchange message carries (an `EVENT_BATCH` carries several);
    ValueError when it is malformed."""
    run_id, name = topology.parse_event_key(routing_key)
    payload = json_object(body)
    if name != EVENT_BATCH:
        return [Event(run_id, name, payload)]
    events = payload.get("events")
    if not isinstance(events, list) or not all(
        isinstance(e, dict) and isinstance(e.get("event"), str) for e in events
    ):
        raise ValueError("an event batch must hold a list of events with names")
    return [Event(run_id, event["event"], event) for event in events]


def failure_disposition(exc: Exception, where: str) -> Disposition:
    """A handler raised: an undecodable message is dead-lettered, anything else requeued
    (the queue's delivery limit bounds how often)."""
    if isinstance(exc, DecodeError):
        log.warning("%s: undecodable message, dead-lettering it: %s", where, exc)
        return Disposition.REJECT
    log.error("%s: handler failed, requeueing", where, exc_info=exc)
    return Disposition.REQUEUE


async def handle_one(handler: Handler, queue_name: str, delivery: Delivery) -> Disposition:
    """Run a single-delivery handler; what it returns or raises, as a Disposition."""
    try:
        disposition = await handler(delivery.body, dict(delivery.headers), delivery.redelivered)
        if not isinstance(disposition, Disposition):
            raise TypeError(f"handler returned {disposition!r}, not a Disposition")
    except Exception as exc:
        return failure_disposition(exc, f"{queue_name} message {delivery.message_id}")
    return disposition


async def handle_batch(
    handler: BatchHandler, queue_name: str, deliveries: list[Delivery]
) -> list[Disposition]:
    """Run a batch handler; when it raises, each delivery is retried alone, so one poison
    message does not spend its batch-mates' deliveries."""
    try:
        dispositions = list(await handler(deliveries))
        if len(dispositions) != len(deliveries) or not all(
            isinstance(d, Disposition) for d in dispositions
        ):
            raise TypeError(
                f"batch handler returned {dispositions!r} for {len(deliveries)} deliveries"
            )
    except Exception as exc:
        if len(deliveries) == 1:
            return [failure_disposition(exc, f"{queue_name} message {deliveries[0].message_id}")]
        log.warning(
            "%s: batch of %d failed (%r); retrying each delivery alone",
            queue_name,
            len(deliveries),
            exc,
        )
        return [d for one in deliveries for d in await handle_batch(handler, queue_name, [one])]
    return dispositions


async def take_batch(
    buffer: asyncio.Queue[T | None],
    first: T,
    *,
    batch_size: int,
    max_wait_s: float,
    more_ready: Callable[[], Awaitable[bool]] | None = None,
) -> tuple[list[T], bool]:
    """`first`, everything already in `buffer`, and what else arrives within `max_wait_s`,
    up to `batch_size`; and whether the end marker (None) was met. With `max_wait_s` 0 a
    lone message goes at once, while under load the batch fills from what queued up.

    `more_ready` (the broker's answer to "does the queue hold more ready messages?") is
    asked once when the buffer runs dry: when nothing more is ready the batch goes at once
    instead of waiting out `max_wait_s` (a lone result is not held back by the window)."""
    loop = asyncio.get_running_loop()
    batch, deadline = [first], loop.time() + max_wait_s
    asked = False
    while len(batch) < batch_size:
        try:
            item = buffer.get_nowait()
        except asyncio.QueueEmpty:
            if more_ready is not None and not asked:
                asked = True
                if not await more_ready():
                    # take what arrived during the question, then go
                    deadline = loop.time()
                continue
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                break
            try:
                item = await asyncio.wait_for(buffer.get(), remaining_s)
            except TimeoutError:
                break
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False


class ItemStream(Generic[T]):
    """What a subscription hands out: an async iterator over items put in by the broker,
    ended by `finish()` (both brokers' subscriptions build on it)."""

    def __init__(self) -> None:
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

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._items.put_nowait(None)


class Broker:
    """What every broker shares (`AmqpBroker`, `MemoryBroker`), and all that the mesh's
    components use of one: `async with` (connect, then close), publishing (typed
    publishes on top of `publish_many`), consuming, health and draining."""

    topology: Topology

    async def connect(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def declare(self) -> None:
        """Declare the topology's exchanges, queues and bindings (idempotent)."""
        raise NotImplementedError

    async def consume(self, queue_name: str, handler: Handler, *, prefetch: int) -> Any:
        """Run `handler` on every delivery of a queue, at most `prefetch` at a time.

        DecodeError from the handler rejects to the dead-letter exchange; any other
        exception requeues (bounded by the queue's delivery limit).
        """
        raise NotImplementedError

    async def consume_batches(
        self,
        queue_name: str,
        handler: BatchHandler,
        *,
        batch_size: int,
        max_wait_s: float,
        prefetch: int | None = None,
    ) -> Any:
        """Hand deliveries to `handler` in batches of up to `batch_size`, waiting at most
        `max_wait_s` after the first one; the handler returns one Disposition per delivery.

        Batches run one at a time. When the handler raises on a batch, each delivery is
        retried alone, so one poison message does not spend its batch-mates' deliveries.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return await self._consume_batches(
            queue_name, handler, batch_size, max_wait_s, prefetch or 2 * batch_size
        )

    async def _consume_batches(
        self, queue_name: str, handler: BatchHandler, batch_size: int, max_wait_s: float,
        prefetch: int,
    ) -> Any:  # fmt: skip
        raise NotImplementedError

    async def subscribe_control(self) -> AsyncIterator[dict[str, Any]]:
        """A private queue on the control fanout: every broadcast reaches every subscriber."""
        raise NotImplementedError

    async def health(self) -> str | None:
        """None while connected and every consumer is up; else what is down."""
        raise NotImplementedError

    async def drain(self, *, timeout_s: float | None = 30.0) -> None:
        """Stop consuming, let in-flight handlers finish (up to timeout_s), then close."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

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
        """Publish one message (confirmed, where the broker confirms); raises `Unroutable`
        or `PublishFailed`, and ValueError for a delay outside the tasks exchange.

        ``exchange`` "" is the default exchange. A delayed task waits in its class's delay
        queue, which then routes it on.
        """
        publication = Publish(
            exchange,
            routing_key,
            body,
            message_id=message_id,
            headers=headers,
            persistent=persistent,
            delay_ms=delay_ms,
            mandatory=mandatory,
        )
        [error] = await self.publish_many([publication])
        if error is not None:
            raise error

    async def publish_many(self, publications: Sequence[Publish]) -> list[Exception | None]:
        """Publish each message; per message, in order, None or the error it raised."""
        errors: list[Exception | None] = []
        for publication in publications:
            try:
                await self._publish_one(publication)
            except (ValueError, BrokerError) as exc:
                errors.append(exc)
            else:
                errors.append(None)
        return errors

    async def _publish_one(self, publication: Publish) -> None:
        """One message (a broker that overrides `publish_many` need not have this)."""
        raise NotImplementedError

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

    async def publish_result(
        self,
        result: TaskResult,
        *,
        body: bytes | None = None,
        signature: Mapping[str, str] | None = None,
    ) -> None:
        """Publish a result; `body` is its encoding when the caller already made it, and
        `signature` the headers that sign it (`fanflow.mesh.signing`)."""
        route = self.topology.result_route()
        await self.publish_raw(
            route.exchange,
            route.routing_key,
            result.encode() if body is None else body,
            message_id=self.topology.result_message_id(result.task_id),
            headers={**self.topology.result_headers(result), **(signature or {})},
        )

    async def publish_event(self, run_id: str, event_name: str, payload: dict[str, Any]) -> None:
        """Publish a run event; nobody listening is fine (not mandatory, not persistent)."""
        await self._publish_best_effort(self.topology.event_route(run_id, event_name), payload)

    async def publish_control(self, payload: dict[str, Any]) -> None:
        """Broadcast to every worker's control subscription (no workers is fine)."""
        await self._publish_best_effort(self.topology.control_route(), payload)

    async def _publish_best_effort(self, route: Route, payload: dict[str, Any]) -> None:
        await self.publish_raw(
            route.exchange,
            route.routing_key,
            json.dumps(payload).encode(),
            message_id=None,
            persistent=False,
            mandatory=False,
        )
