"""An in-memory broker with the AMQP transport's contract, for one process.

`MemoryBroker` has `AmqpBroker`'s interface and the semantics fanflow relies on: exchanges
(direct, topic, fanout, the default exchange) routed by the same `Topology`; mandatory
publishes to no queue raise `Unroutable`; quorum-style delivery limits (a message requeued
more than `delivery_limit` times is dead-lettered) and dead-letter routes with an `x-death`
header; delay queues that route a task on after its delay; prefetch-bounded consumers and
batch consumers that settle each delivery once, in one place; no-ack subscriptions.

Nothing is durable: a message lives as long as the process. It lets the relay, the driver,
the worker and the aggregator run in unit tests in milliseconds, and the same contract
suite (`tests/mesh/test_broker_contract.py`) runs over it and over RabbitMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from fanflow.mesh.memory_consumers import (
    BatchMemoryConsumer,
    MemoryConsumer,
    MemoryControlSubscription,
    MemoryEventSubscription,
    MemoryMessage,
    MemorySubscription,
    SingleMemoryConsumer,
)
from fanflow.mesh.topology import QueueSpec, Topology
from fanflow.mesh.transport import (
    BatchHandler,
    Broker,
    BrokerError,
    Disposition,
    Handler,
    Publish,
    PublishFailed,
    Unroutable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["MemoryBroker"]


@dataclass
class _Queue:
    name: str
    arguments: Mapping[str, Any]
    ready: deque[MemoryMessage] = field(default_factory=deque)
    consumers: list[MemoryConsumer] = field(default_factory=list)
    #: round robin over consumers with a free prefetch slot
    turn: int = 0

    @property
    def delivery_limit(self) -> int | None:
        limit = self.arguments.get("x-delivery-limit")
        return int(limit) if limit is not None else None


class MemoryBroker(Broker):
    """`AmqpBroker`'s interface, in this process's memory. Use as ``async with``."""

    def __init__(self, *, topology: Topology | None = None) -> None:
        self.topology = topology or Topology()
        self._queues: dict[str, _Queue] = {}
        #: exchange -> its type; exchange -> [(queue or subscription, routing key)]
        self._exchanges: dict[str, str] = {}
        self._bindings: dict[str, list[tuple[str, str]]] = {}
        self._subscriptions: dict[str, MemorySubscription[Any]] = {}
        self._consumers: list[MemoryConsumer] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._delay_queues: set[str] = set()
        self._connected = False
        self._serial = 0

    async def connect(self) -> None:
        self._connected = True

    # -- topology -----------------------------------------------------------------------

    async def declare(self) -> None:
        """Declare the topology's exchanges, queues and bindings (idempotent)."""
        self._check_connected()
        for exchange in self.topology.exchanges():
            self._exchanges[exchange.name] = exchange.type
            self._bindings.setdefault(exchange.name, [])
        for spec in self.topology.queues():
            self._declare_queue(spec)
        for binding in self.topology.bindings():
            self._bind(binding.exchange, binding.queue, binding.routing_key)

    async def delete_topology(self, *, extra_queues: Iterable[str] = ()) -> None:
        for name in [q.name for q in self.topology.queues()] + [*self._delay_queues, *extra_queues]:
            self._queues.pop(name, None)
        for exchange in self.topology.exchanges():
            self._exchanges.pop(exchange.name, None)
            self._bindings.pop(exchange.name, None)
        self._delay_queues.clear()

    @property
    def delay_queues(self) -> frozenset[str]:
        return frozenset(self._delay_queues)

    async def message_count(self, queue_name: str) -> int:
        """Messages ready in a queue (not counting unacknowledged ones)."""
        return len(self._queue(queue_name).ready)

    # -- publishing -----------------------------------------------------------------------

    async def _publish_one(self, publication: Publish) -> None:
        """Route a message now (or after its delay, tasks only); raises `Unroutable` when a
        mandatory message reaches no queue, `PublishFailed` for an undeclared exchange."""
        exchange, routing_key = publication.exchange, publication.routing_key
        self._check_connected()
        if publication.delay_ms:
            if exchange != self.topology.tasks_exchange:
                raise ValueError(f"only tasks can be delayed, not messages to {exchange!r}")
            spec = self.topology.delay_queue_spec(routing_key, publication.delay_ms)
            self._declare_queue(spec)
            self._delay_queues.add(spec.name)
            exchange, routing_key = "", spec.name
        message = MemoryMessage(
            bytes(publication.body),
            dict(publication.headers or {}),
            publication.message_id,
            exchange,
            routing_key,
            publication.persistent,
        )
        if not self._route(message) and publication.mandatory:
            raise Unroutable(
                f"no queue for {routing_key!r} on exchange {exchange or '(default)'!r}"
            )

    # -- consuming ------------------------------------------------------------------------

    async def consume(self, queue_name: str, handler: Handler, *, prefetch: int) -> MemoryConsumer:
        """Run `handler` on every delivery, at most `prefetch` at a time (as `AmqpBroker`)."""
        return self._start(SingleMemoryConsumer(self, queue_name, handler, prefetch))

    async def _consume_batches(
        self, queue_name: str, handler: BatchHandler, batch_size: int, max_wait_s: float,
        prefetch: int,
    ) -> MemoryConsumer:  # fmt: skip
        consumer = BatchMemoryConsumer(self, queue_name, handler, prefetch, batch_size, max_wait_s)
        return self._start(consumer)

    async def subscribe_events(self, pattern: str | None = None) -> MemoryEventSubscription:
        subscription = MemoryEventSubscription(self, self._private_name())
        self._subscriptions[subscription.name] = subscription
        if pattern is not None:
            self._bind(self.topology.events_exchange, subscription.name, pattern)
        return subscription

    async def subscribe_control(self) -> MemoryControlSubscription:
        subscription = MemoryControlSubscription(self, self._private_name())
        self._subscriptions[subscription.name] = subscription
        self._bind(self.topology.control_exchange, subscription.name, "")
        return subscription

    # -- shutting down --------------------------------------------------------------------

    async def health(self) -> str | None:
        """None while connected and every consumer is up; else what is down."""
        if not self._connected:
            return "broker closed"
        for consumer in self._consumers:
            if consumer.stopping:
                return f"consumer of {consumer.queue_name} stopped"
        return None

    async def drain(self, *, timeout_s: float | None = 30.0) -> None:
        """Stop consuming, let in-flight handlers finish (up to timeout_s), then close."""
        await asyncio.gather(
            *(consumer.stop(timeout_s=timeout_s) for consumer in self._consumers),
            return_exceptions=True,
        )
        await self.close()

    async def close(self) -> None:
        for subscription in list(self._subscriptions.values()):
            subscription.finish()
        self._subscriptions.clear()
        for consumer in self._consumers:
            consumer.abandon()
        self._consumers.clear()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._connected = False

    # -- routing (internals) ----------------------------------------------------------------

    def _check_connected(self) -> None:
        if not self._connected:
            raise RuntimeError("MemoryBroker is not connected: use `async with MemoryBroker()`")

    def _private_name(self) -> str:
        self._serial += 1
        return f"amq.gen-memory-{self._serial}"

    def _declare_queue(self, spec: QueueSpec) -> None:
        existing = self._queues.get(spec.name)
        if existing is None:
            self._queues[spec.name] = _Queue(spec.name, dict(spec.arguments))
        elif dict(existing.arguments) != dict(spec.arguments):
            raise BrokerError(f"queue {spec.name!r} exists with other arguments")

    def _bind(self, exchange: str, target: str, routing_key: str) -> None:
        if exchange not in self._exchanges:
            raise BrokerError(f"no exchange {exchange!r} to bind {target!r} to")
        binding = (target, routing_key)
        if binding not in self._bindings[exchange]:
            self._bindings[exchange].append(binding)

    def _unbind(self, exchange: str, target: str, routing_key: str) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._bindings[exchange].remove((target, routing_key))

    def _queue(self, name: str) -> _Queue:
        try:
            return self._queues[name]
        except KeyError:
            raise BrokerError(f"no queue {name!r}") from None

    def _targets(self, exchange: str, routing_key: str) -> list[str]:
        if exchange == "":
            return [routing_key] if routing_key in self._queues else []
        kind = self._exchanges.get(exchange)
        if kind is None:
            raise PublishFailed(f"publish to {exchange!r}/{routing_key!r}: no such exchange")
        found: list[str] = []
        for target, key in self._bindings[exchange]:
            if kind == "fanout" or (
                _topic_match(key, routing_key) if kind == "topic" else key == routing_key
            ):
                found.append(target)
        return list(dict.fromkeys(found))

    def _route(self, message: MemoryMessage) -> bool:
        targets = self._targets(message.exchange, message.routing_key)
        routed = False
        for target in targets:
            subscription = self._subscriptions.get(target)
            if subscription is not None:
                subscription.offer(message)
                routed = True
            elif target in self._queues:
                self._enqueue(self._queues[target], message)
                routed = True
        return routed

    def _enqueue(self, queue: _Queue, message: MemoryMessage) -> None:
        ttl = queue.arguments.get("x-message-ttl")
        if ttl is not None:
            # a delay queue: nobody consumes it; the message moves on when its time is up
            loop = asyncio.get_running_loop()
            handle: asyncio.TimerHandle | None = None

            def expire() -> None:
                self._timers.discard(handle)
                self._dead_letter(queue, message, reason="expired")

            handle = loop.call_later(int(ttl) / 1000, expire)
            self._timers.add(handle)
            return
        queue.ready.append(message)
        self._dispatch(queue)

    def _dispatch(self, queue: _Queue) -> None:
        while queue.ready:
            free = [c for c in queue.consumers if c.has_room()]
            if not free:
                return
            consumer = free[queue.turn % len(free)]
            queue.turn += 1
            consumer.deliver(queue.ready.popleft())

    def _settle(self, queue_name: str, message: MemoryMessage, disposition: Disposition) -> None:
        """The one place where a delivery is acknowledged, requeued or dead-lettered."""
        queue = self._queues.get(queue_name)
        if queue is None or disposition is Disposition.ACK:
            return
        if disposition is Disposition.REJECT:
            self._dead_letter(queue, message, reason="rejected")
            return
        returned = replace(message, returns=message.returns + 1, redelivered=True)
        limit = queue.delivery_limit
        if limit is not None and returned.returns > limit:
            self._dead_letter(queue, returned, reason="delivery_limit")
            return
        queue.ready.append(returned)
        self._dispatch(queue)

    def _dead_letter(self, queue: _Queue, message: MemoryMessage, *, reason: str) -> None:
        exchange = queue.arguments.get("x-dead-letter-exchange")
        if exchange is None:
            log.warning("dropping %s from %s (%s): no dead-letter route", message.message_id,
                        queue.name, reason)  # fmt: skip
            return
        key = queue.arguments.get("x-dead-letter-routing-key", message.routing_key)
        death = {
            "queue": queue.name,
            "reason": reason,
            "exchange": message.exchange,
            "routing-keys": [message.routing_key],
            "count": 1,
        }
        headers = dict(message.headers)
        headers["x-death"] = [death, *headers.get("x-death", [])]
        moved = MemoryMessage(message.body, headers, message.message_id, str(exchange), str(key),
                         message.persistent)  # fmt: skip
        if not self._route(moved):
            log.warning("dead-lettered %s from %s reached no queue", message.message_id, queue.name)

    def _start(self, consumer: MemoryConsumer) -> MemoryConsumer:
        queue = self._queue(consumer.queue_name)
        queue.consumers.append(consumer)
        self._consumers.append(consumer)
        self._dispatch(queue)
        return consumer

    def _detach(self, consumer: MemoryConsumer) -> None:
        queue = self._queues.get(consumer.queue_name)
        if queue is not None and consumer in queue.consumers:
            queue.consumers.remove(consumer)


def _topic_match(pattern: str, key: str) -> bool:
    """AMQP topic matching: `*` one word, `#` zero or more words."""
    return _match(pattern.split("."), key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])
