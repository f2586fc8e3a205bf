"""The transport contract, over the real RabbitMQ broker and the in-memory one: topology,
confirms, dispositions, delays, delivery limits, prefetch, events, control broadcasts and
drain.

Each test runs in its own random namespace and deletes what it declared.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from fanflow.errors import DecodeError
from fanflow.mesh.amqp import (
    EVENT_BATCH,
    AmqpBroker,
    BrokerError,
    Delivery,
    Disposition,
    Event,
    Publish,
    PublishFailed,
    Unroutable,
    batch_body,
)
from fanflow.mesh.memory import MemoryBroker
from fanflow.mesh.topology import HEADER_CLASS, HEADER_RUN_ID, Topology
from fanflow.messages import NodeTask, TaskResult

pytestmark = pytest.mark.timeout(30)

MakeBroker = Callable[..., Awaitable[AmqpBroker]]


@pytest.fixture(params=["amqp", "memory"])
async def make_broker(
    request: pytest.FixtureRequest, amqp_url: Callable[[], str]
) -> AsyncIterator[MakeBroker]:
    """Factory: `await make_broker(topology=None, declare=True)` gives a connected broker
    on a fresh namespace (or the given topology); everything is deleted afterwards.

    Two brokers made in one test share one memory, as two connections share RabbitMQ."""
    if request.param == "memory":
        shared: MemoryBroker | None = None

        async def make_memory(topology: Topology | None = None, *, declare: bool = True) -> Any:
            nonlocal shared
            if shared is None:
                shared = MemoryBroker(topology=topology or Topology(namespace="memory"))
                await shared.connect()
            if declare:
                await shared.declare()
            return shared

        yield make_memory
        if shared is not None:
            await shared.close()
        return
    url = amqp_url()
    brokers: list[AmqpBroker] = []
    namespace = f"fanflow-test-{uuid.uuid4().hex[:10]}"

    async def make(topology: Topology | None = None, *, declare: bool = True) -> AmqpBroker:
        broker = AmqpBroker(url, topology=topology or Topology(namespace=namespace))
        await broker.connect()
        brokers.append(broker)
        if declare:
            await broker.declare()
        return broker

    yield make
    delay_queues = {name for broker in brokers for name in broker.delay_queues}
    for broker in brokers:
        await broker.close()
    for topology in {broker.topology.namespace: broker.topology for broker in brokers}.values():
        async with AmqpBroker(url, topology=topology) as cleaner:
            await cleaner.delete_topology(extra_queues=delay_queues)


def make_task(node_type: str = "code", *, run_id: str = "run1", node_id: str = "n1") -> NodeTask:
    return NodeTask(
        task_id=f"{run_id}/-/{node_id}/0",
        run_id=run_id,
        node_id=node_id,
        node_type=node_type,
        data={"code": "def main(): return {}"},
    )


class Recorder:
    """A handler that records what it got and answers with a fixed disposition."""

    def __init__(self, disposition: Disposition = Disposition.ACK) -> None:
        self.disposition = disposition
        self.calls: list[tuple[bytes, dict[str, Any], bool]] = []
        self.received = asyncio.Event()

    async def __call__(
        self, body: bytes, headers: dict[str, Any], redelivered: bool
    ) -> Disposition:
        self.calls.append((body, headers, redelivered))
        self.received.set()
        return self.disposition


async def collect(
    broker: AmqpBroker, queue: str, count: int, *, timeout_s: float = 5
) -> list[Delivery]:
    """The next `count` deliveries of a queue (acked), via a batch consumer."""
    got: list[Delivery] = []
    done = asyncio.Event()

    async def handler(batch: list[Delivery]) -> Sequence[Disposition]:
        got.extend(batch)
        if len(got) >= count:
            done.set()
        return [Disposition.ACK] * len(batch)

    consumer = await broker.consume_batches(queue, handler, batch_size=count, max_wait_s=0.05)
    try:
        await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        await consumer.stop(timeout_s=2)
    return got


async def test_declare_is_idempotent(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    await broker.declare()
    other = await make_broker(broker.topology)  # a second process declaring the same
    await other.declare()
    for cls in broker.topology.classes:
        assert await broker.message_count(broker.topology.task_queue(cls)) == 0
    assert await broker.message_count(broker.topology.results_queue) == 0


async def test_task_round_trip_keeps_id_and_persistence(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    task = make_task("http-request")
    await broker.publish_task(task)
    [delivery] = await collect(broker, broker.topology.task_queue("http"), 1)
    assert NodeTask.decode(delivery.body) == task
    assert delivery.message_id == task.task_id
    assert delivery.persistent
    assert delivery.routing_key == "http"
    assert delivery.headers[HEADER_CLASS] == "http"
    assert delivery.headers[HEADER_RUN_ID] == "run1"
    assert not delivery.redelivered

    result = TaskResult(task_id=task.task_id, run_id="run1", node_id="n1", status="succeeded")
    await broker.publish_result(result)
    [delivery] = await collect(broker, broker.topology.results_queue, 1)
    assert TaskResult.decode(delivery.body) == result
    assert delivery.message_id == f"result:{task.task_id}"
    assert delivery.persistent


async def test_delayed_task_arrives_after_the_delay(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    arrived_at: list[float] = []
    arrived = asyncio.Event()
    seen: list[dict[str, Any]] = []

    async def handler(body: bytes, headers: dict[str, Any], redelivered: bool) -> Disposition:
        arrived_at.append(time.monotonic())
        seen.append(headers)
        arrived.set()
        return Disposition.ACK

    await broker.consume(broker.topology.task_queue("llm"), handler, prefetch=1)
    sent_at = time.monotonic()
    await broker.publish_task(make_task("llm"), delay_ms=300)
    await asyncio.wait_for(arrived.wait(), 5)
    assert arrived_at[0] - sent_at >= 0.3
    delay_queue = broker.topology.delay_queue("llm", 300)
    assert broker.delay_queues == {delay_queue}
    [death] = seen[0]["x-death"]
    assert (death["reason"], death["queue"]) == ("expired", delay_queue)


async def test_unroutable_publish_raises(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    with pytest.raises(Unroutable):
        await broker.publish_raw(
            broker.topology.tasks_exchange, "no-such-class", b"{}", message_id="x"
        )
    with pytest.raises(Unroutable):
        await broker.publish_raw("", "no-such-queue", b"{}", message_id="y")
    with pytest.raises(PublishFailed):
        await broker.publish_raw("no-such-exchange", "code", b"{}", message_id="z")
    with pytest.raises(BrokerError):
        await broker.consume("no-such-queue", Recorder(), prefetch=1)
    await broker.publish_task(make_task())  # the broker still works afterwards
    assert await broker.message_count(broker.topology.task_queue("code")) == 1


@pytest.mark.parametrize("outcome", ["reject", "decode-error"])
async def test_rejected_task_is_dead_lettered_with_its_routing(
    make_broker: MakeBroker, outcome: str
) -> None:
    broker = await make_broker()
    calls = 0

    async def handler(body: bytes, headers: dict[str, Any], redelivered: bool) -> Disposition:
        nonlocal calls
        calls += 1
        if outcome == "decode-error":
            NodeTask.decode(b"not json")
        return Disposition.REJECT

    task = make_task("code")
    await broker.consume(broker.topology.task_queue("code"), handler, prefetch=1)
    await broker.publish_task(task)
    [dead] = await collect(broker, broker.topology.dead_tasks_queue, 1)
    assert calls == 1
    assert NodeTask.decode(dead.body) == task
    assert dead.message_id == task.task_id
    assert dead.headers[HEADER_CLASS] == "code"
    [death] = dead.headers["x-death"]
    assert death["reason"] == "rejected"
    assert death["exchange"] == broker.topology.tasks_exchange
    assert death["routing-keys"] == ["code"]
    assert death["queue"] == broker.topology.task_queue("code")


async def test_decode_error_rejects_without_redelivery(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    attempts = Recorder()

    async def handler(body: bytes, headers: dict[str, Any], redelivered: bool) -> Disposition:
        await attempts(body, headers, redelivered)
        raise DecodeError("bad body")

    await broker.consume(broker.topology.results_queue, handler, prefetch=1)
    await broker.publish_raw("", broker.topology.results_queue, b"garbage", message_id="r1")
    [dead] = await collect(broker, broker.topology.dead_results_queue, 1)
    assert dead.body == b"garbage"
    assert len(attempts.calls) == 1


async def test_always_failing_handler_is_stopped_by_the_delivery_limit(
    make_broker: MakeBroker,
) -> None:
    topology = Topology(namespace=f"fanflow-test-{uuid.uuid4().hex[:10]}", delivery_limit=2)
    broker = await make_broker(topology)
    attempts: list[bool] = []

    async def handler(body: bytes, headers: dict[str, Any], redelivered: bool) -> Disposition:
        attempts.append(redelivered)
        raise RuntimeError("boom")

    await broker.consume(topology.task_queue("http"), handler, prefetch=1)
    await broker.publish_task(make_task("http-request"))
    [dead] = await collect(broker, topology.dead_tasks_queue, 1)
    assert attempts == [False, True, True]  # the first delivery and `delivery_limit` more
    assert dead.headers["x-death"][0]["reason"] == "delivery_limit"
    assert dead.headers["x-death"][0]["routing-keys"] == ["http"]


async def test_prefetch_bounds_concurrency(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    in_flight = peak = handled = 0
    all_done = asyncio.Event()

    async def handler(body: bytes, headers: dict[str, Any], redelivered: bool) -> Disposition:
        nonlocal in_flight, peak, handled
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.1)
        in_flight -= 1
        handled += 1
        if handled == 10:
            all_done.set()
        return Disposition.ACK

    for i in range(10):
        await broker.publish_task(make_task("code", node_id=f"n{i}"))
    await broker.consume(broker.topology.task_queue("code"), handler, prefetch=3)
    await asyncio.wait_for(all_done.wait(), 10)
    assert peak == 3


async def test_batches_isolate_a_poison_message(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    batch_sizes: list[int] = []
    acked: list[str] = []
    done = asyncio.Event()

    async def handler(batch: list[Delivery]) -> Sequence[Disposition]:
        batch_sizes.append(len(batch))
        if any(d.body == b"poison" for d in batch):
            if len(batch) == 1:
                raise DecodeError("poison")
            raise RuntimeError("one bad apple")
        acked.extend(d.message_id or "" for d in batch)
        if len(acked) == 4:
            done.set()
        return [Disposition.ACK] * len(batch)

    queue = broker.topology.results_queue
    for i, body in enumerate([b"a", b"b", b"poison", b"c", b"d"]):
        await broker.publish_raw("", queue, body, message_id=f"m{i}")
    await broker.consume_batches(queue, handler, batch_size=5, max_wait_s=0.2)
    await asyncio.wait_for(done.wait(), 5)
    [dead] = await collect(broker, broker.topology.dead_results_queue, 1)
    assert dead.body == b"poison"
    assert sorted(acked) == ["m0", "m1", "m3", "m4"]
    assert batch_sizes[0] == 5


async def test_event_subscription_receives_only_bound_runs(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    events = await broker.subscribe_events()
    await events.bind("run-a")
    await broker.publish_event("run-b", "node_finished", {"n": 0})
    await broker.publish_event("run-a", "node_finished", {"n": 1})
    await events.unbind("run-a")
    await events.bind("run-c")
    await broker.publish_event("run-a", "workflow_finished", {"n": 2})
    await broker.publish_event("run-c", "workflow_finished", {"n": 3})
    # one publisher channel, one queue: arrival order is publish order
    got = [await asyncio.wait_for(anext(events), 5) for _ in range(2)]
    assert got == [
        Event("run-a", "node_finished", {"n": 1}),
        Event("run-c", "workflow_finished", {"n": 3}),
    ]
    await events.close()
    assert [event async for event in events] == []


async def test_control_broadcast_reaches_every_subscriber(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    worker_1 = await make_broker(broker.topology, declare=False)
    worker_2 = await make_broker(broker.topology, declare=False)
    subscriptions = [await worker_1.subscribe_control(), await worker_2.subscribe_control()]
    await broker.publish_control({"stop_run": "run-a"})
    for subscription in subscriptions:
        assert await asyncio.wait_for(anext(subscription), 5) == {"stop_run": "run-a"}


async def test_drain_waits_for_the_in_flight_handler(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    started, finished = asyncio.Event(), asyncio.Event()

    async def handler(body: bytes, headers: dict[str, Any], redelivered: bool) -> Disposition:
        started.set()
        await asyncio.sleep(0.5)
        finished.set()
        return Disposition.ACK

    queue = broker.topology.task_queue("code")
    await broker.consume(queue, handler, prefetch=5)
    await broker.publish_task(make_task("code"))
    await asyncio.wait_for(started.wait(), 5)
    await broker.drain(timeout_s=5)
    assert finished.is_set()

    observer = await make_broker(broker.topology, declare=False)
    assert await observer.message_count(queue) == 0  # acked before the channel closed
    redelivered = Recorder()
    await observer.consume(queue, redelivered, prefetch=1)
    await asyncio.sleep(0.3)
    assert redelivered.calls == []


async def test_health_names_a_stopped_consumer(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    consumer = await broker.consume(broker.topology.task_queue("code"), Recorder(), prefetch=1)
    assert await broker.health() is None
    await consumer.stop(timeout_s=1)
    assert await broker.health() == f"consumer of {broker.topology.task_queue('code')} stopped"
    await broker.close()
    assert await broker.health() is not None


def test_topology_names_and_arguments() -> None:
    topology = Topology(namespace="ns")
    assert [topology.class_for(t) for t in ("question-classifier", "http-request", "code")] == [
        "llm",
        "http",
        "code",
    ]
    assert topology.classes == ("code", "http", "llm", "tool")
    assert topology.task_queue("llm") == "ns.tasks.llm"
    assert topology.task_route("parameter-extractor").routing_key == "llm"
    spec = topology.delay_queue_spec("http", 300)
    assert spec.name == "ns.delay.http.300"
    assert spec.arguments["x-message-ttl"] == 300
    assert spec.arguments["x-dead-letter-exchange"] == "ns.tasks"
    assert spec.arguments["x-dead-letter-routing-key"] == "http"
    assert spec.arguments["x-expires"] > 300
    task_queue = {q.name: q for q in topology.queues()}["ns.tasks.code"]
    assert task_queue.arguments["x-queue-type"] == "quorum"
    assert task_queue.arguments["x-delivery-limit"] == 5
    assert task_queue.arguments["x-dead-letter-exchange"] == "ns.dlx"
    assert topology.event_route("r1", "node_started").routing_key == "run.r1.node_started"
    assert Topology.parse_event_key("run.r1.node_started") == ("r1", "node_started")
    assert Topology.result_message_id("t/1") == "result:t/1"
    with pytest.raises(KeyError, match="no worker class for node type 'if-else'"):
        topology.class_for("if-else")
    with pytest.raises(ValueError):
        topology.event_route("a.b", "x")
    with pytest.raises(ValueError):
        topology.delay_queue("code", 0)


async def test_publish_many_pipelines_and_reports_per_message(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    queue = broker.topology.results_queue
    publications = [Publish("", queue, f"m{i}".encode(), message_id=f"m{i}") for i in range(300)]
    publications.insert(100, Publish("", "no-such-queue", b"lost", message_id="lost"))
    publications.insert(200, Publish("", queue, b"late", message_id="late", delay_ms=100))
    errors = await broker.publish_many(publications)
    assert isinstance(errors[100], Unroutable)
    assert isinstance(errors[200], ValueError)  # only tasks can be delayed
    assert [e for i, e in enumerate(errors) if i not in (100, 200)] == [None] * 300
    got = await collect(broker, queue, 300)
    assert [d.message_id for d in got] == [f"m{i}" for i in range(300)]  # in publish order


async def test_an_event_batch_reaches_subscribers_as_single_events(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    events = await broker.subscribe_events()
    await events.bind("run-a")
    bodies = [
        json.dumps({"run_id": "run-a", "event": name, "data": {"i": i}}).encode()
        for i, name in enumerate(["node_started", "node_finished", "iteration_next"])
    ]
    route = broker.topology.event_route("run-a", EVENT_BATCH)
    await broker.publish_raw(
        route.exchange, route.routing_key, batch_body(bodies), message_id=None, mandatory=False
    )
    await broker.publish_event("run-a", "workflow_finished", {"n": 1})
    got = [await asyncio.wait_for(anext(events), 5) for _ in range(4)]
    assert [e.name for e in got] == [
        "node_started",
        "node_finished",
        "iteration_next",
        "workflow_finished",
    ]
    assert got[1] == Event("run-a", "node_finished", json.loads(bodies[1]))
    await events.close()


async def test_a_batch_acked_at_once_is_not_redelivered(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    queue = broker.topology.results_queue
    for i in range(40):
        await broker.publish_raw("", queue, b"x", message_id=f"m{i}")
    assert len(await collect(broker, queue, 40)) == 40  # one batch, one multiple-ack
    other = await make_broker(broker.topology, declare=False)
    await asyncio.sleep(0.2)
    assert await other.message_count(queue) == 0


async def test_a_lone_delivery_is_not_held_for_the_batch_window(make_broker: MakeBroker) -> None:
    # the queue holds nothing more ready (the passive declare says so): the batch of one
    # goes at once, not after the 60 s window (which would outlast the 20 s bound)
    broker = await make_broker()
    got: list[list[Delivery]] = []
    done = asyncio.Event()

    async def handler(batch: list[Delivery]) -> Sequence[Disposition]:
        got.append(batch)
        done.set()
        return [Disposition.ACK] * len(batch)

    queue = broker.topology.results_queue
    await broker.consume_batches(queue, handler, batch_size=50, max_wait_s=60.0)
    await broker.publish_raw("", queue, b"lone", message_id="lone-1")
    await asyncio.wait_for(done.wait(), 20)
    assert [[d.body for d in batch] for batch in got] == [[b"lone"]]
