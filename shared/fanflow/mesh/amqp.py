"""The RabbitMQ transport: only amqp*.py modules import aio_pika.

`AmqpBroker` publishes with publisher confirms (mandatory publishes raise `Unroutable`),
declares `fanflow.mesh.topology`, and runs consumers (`fanflow.mesh.amqp_consumers`) whose handlers
never see AMQP: a handler gets the body, the headers and the redelivered flag, and returns a
`Disposition` (`fanflow.mesh.transport`); the consumer loop (`_settle`, the one place) acks,
requeues or rejects to the dead-letter exchange accordingly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    DeliveryMode,
)

from fanflow.mesh.amqp_consumers import (
    BatchConsumer,
    Consumer,
    ControlSubscription,
    EventSubscription,
    SingleConsumer,
    Subscription,
    broker_errors,
)
from fanflow.mesh.topology import QueueSpec, Topology
from fanflow.mesh.transport import (
    EVENT_BATCH,
    BatchHandler,
    Broker,
    BrokerError,
    Delivery,
    Disposition,
    Event,
    Handler,
    Publish,
    PublishFailed,
    Unroutable,
    batch_body,
)

__all__ = [
    "EVENT_BATCH",
    "AmqpBroker",
    "BatchHandler",
    "BrokerError",
    "Consumer",
    "ControlSubscription",
    "Delivery",
    "Disposition",
    "Event",
    "EventSubscription",
    "Handler",
    "Publish",
    "PublishFailed",
    "Unroutable",
    "batch_body",
]

T = TypeVar("T")

#: AMQP heartbeat (s) asked for unless the URL sets `?heartbeat=`: the broker closes the
#: connection of a peer silent for 2-3 heartbeats (hung, SIGSTOPped, partitioned), and its
#: unacknowledged deliveries go back to their queues — well within 30 s, instead of the
#: ~3 min the broker's default of 60 s takes
HEARTBEAT_S = 5


def with_heartbeat(url: str, heartbeat_s: int = HEARTBEAT_S) -> str:
    """`url` with `heartbeat=heartbeat_s` in its query, unless it names one already."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "heartbeat" for key, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, ("heartbeat", str(heartbeat_s))])))


class AmqpBroker(Broker):
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
        self._subscriptions: list[Subscription[Any]] = []
        self._delay_queues: set[str] = set()

    async def connect(self) -> None:
        try:
            self._connection = await aio_pika.connect_robust(
                with_heartbeat(self.url),
                client_properties={"connection_name": self.connection_name},
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
        with broker_errors(f"declaring the {self.topology.namespace!r} topology"):
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
        with broker_errors(f"deleting the {self.topology.namespace!r} topology"):
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
        with broker_errors(f"counting messages in queue {queue_name!r}"):
            declared = await channel.declare_queue(queue_name, passive=True, robust=False)
        count = declared.declaration_result.message_count
        return int(count or 0)

    # -- publishing -----------------------------------------------------------------------

    async def publish_many(self, publications: Sequence[Publish]) -> list[Exception | None]:
        """Publish every message at once and await their confirms together: per message,
        in order, None when confirmed or the error (`Unroutable`, `PublishFailed`,
        `ValueError` for a delay outside the tasks exchange).

        All publishes are written to the one confirming channel before any confirm is
        awaited, so a batch costs about one broker round trip, and the broker receives
        them in order. Nothing is raised: the caller decides per message.
        """
        channel = self._require(self._publisher)
        errors: list[Exception | None] = [None] * len(publications)
        routes: list[tuple[str, str] | None] = []
        renewed: set[str] = set()
        for position, publication in enumerate(publications):
            try:
                routes.append(await self._route(publication, renewed))
            except (ValueError, BrokerError) as exc:
                errors[position] = exc
                routes.append(None)
        exchanges: dict[str, Any] = {"": channel.default_exchange}
        for route in routes:
            if route is not None and route[0] not in exchanges:
                exchanges[route[0]] = await channel.get_exchange(route[0], ensure=False)
        sends = [
            (position, self._send(exchanges[route[0]], route, publication))
            for position, (route, publication) in enumerate(zip(routes, publications, strict=True))
            if route is not None
        ]
        outcomes = await asyncio.gather(*(send for _, send in sends), return_exceptions=True)
        for (position, _), outcome in zip(sends, outcomes, strict=True):
            if isinstance(outcome, Exception):
                errors[position] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome  # cancelled: not ours to swallow
        return errors

    async def _route(self, publication: Publish, renewed: set[str]) -> tuple[str, str]:
        """(exchange, routing key) to publish to: a delayed task goes to its delay queue."""
        if not publication.delay_ms:
            return publication.exchange, publication.routing_key
        if publication.exchange != self.topology.tasks_exchange:
            raise ValueError(f"only tasks can be delayed, not messages to {publication.exchange!r}")
        spec = self.topology.delay_queue_spec(publication.routing_key, publication.delay_ms)
        if spec.name not in renewed:
            # redeclared on every use: that renews the queue's x-expires lease
            with broker_errors(f"declaring delay queue {spec.name!r}"):
                await self._declare_queue(spec)
            renewed.add(spec.name)
            self._delay_queues.add(spec.name)
        return "", spec.name

    async def _send(self, target: Any, route: tuple[str, str], publication: Publish) -> None:
        exchange, routing_key = route
        message = aio_pika.Message(
            publication.body,
            headers=dict(publication.headers or {}),
            content_type="application/json",
            delivery_mode=DeliveryMode.PERSISTENT
            if publication.persistent
            else DeliveryMode.NOT_PERSISTENT,
            message_id=publication.message_id,
        )
        try:
            await target.publish(
                message,
                routing_key,
                mandatory=publication.mandatory,
                timeout=self.publish_timeout_s,
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
        consumer = SingleConsumer(queue_name, handler)
        await self._start(consumer, prefetch)
        return consumer

    async def _consume_batches(
        self, queue_name: str, handler: BatchHandler, batch_size: int, max_wait_s: float,
        prefetch: int,
    ) -> Consumer:  # fmt: skip
        consumer = BatchConsumer(queue_name, handler, batch_size, max_wait_s)
        await self._start(consumer, prefetch)
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

    async def health(self) -> str | None:
        """None while the connection and every consumer are up; else what is down."""
        if self._connection is None or self._connection.is_closed:
            return "broker connection closed"
        for consumer in self._consumers:
            if consumer.closed:
                return f"consumer of {consumer.queue_name} stopped"
        return None

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
            with broker_errors(f"consuming queue {consumer.queue_name!r}"):
                await channel.set_qos(prefetch_count=prefetch)
                queue = await channel.get_queue(consumer.queue_name, ensure=True)
                await consumer.start(channel, queue)
        except BaseException:
            consumer.abandon()
            await channel.close()
            raise
        self._consumers.append(consumer)

    async def _subscribe(
        self, subscription: Subscription[Any], exchange: str, pattern: str | None
    ) -> None:
        channel = await self._channel()
        with broker_errors(f"subscribing to exchange {exchange!r}"):
            # aio-pika names it amq_<random> itself, so a reconnect can redeclare it
            queue = await channel.declare_queue(None, exclusive=True, auto_delete=True)
            subscription.queue, subscription.exchange = queue, exchange
            if pattern is not None:
                await queue.bind(exchange, pattern)
            await queue.consume(subscription.on_message, no_ack=True)
        self._subscriptions.append(subscription)
