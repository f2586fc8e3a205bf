"""The raw aio-pika floor: n task → result round trips, fanflow's durability, no fanflow.

A "driver" (the aggregator's part) keeps `window` tasks in flight on a quorum queue; a
"worker" process consumes them (manual acks, prefetch `window`), publishes one result per
task on a second quorum queue and acks the task once the result's publisher confirm is in;
the driver consumes the results (manual acks) and publishes the next task per result.
Every message is persistent and confirmed. Seconds for all n results. Queues are random and
deleted after.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from typing import Any

import aio_pika

from benchmarks.mesh import AMQP_URL

_QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


async def _declare(channel: aio_pika.abc.AbstractChannel, name: str) -> aio_pika.abc.AbstractQueue:
    return await channel.declare_queue(name, durable=True, arguments=_QUORUM)


async def _worker(tasks: str, results: str, window: int) -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=window)
        queue = await _declare(channel, tasks)
        await _declare(channel, results)

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await channel.default_exchange.publish(
                aio_pika.Message(message.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=results,
            )
            await message.ack()

        await queue.consume(handle)
        await asyncio.Future()  # until terminated


def _worker_process(tasks: str, results: str, window: int) -> None:
    asyncio.run(_worker(tasks, results, window))


async def _drive(n: int, window: int, tasks: str, results: str) -> float:
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=window)
        await _declare(channel, tasks)
        result_queue = await _declare(channel, results)
        done = asyncio.Event()
        sent = received = 0
        pending: set[asyncio.Task[object]] = set()

        def publish() -> None:
            nonlocal sent
            body = f'{{"item": {sent}}}'.encode()
            sent += 1
            task = asyncio.ensure_future(
                channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=tasks,
                )
            )
            pending.add(task)
            task.add_done_callback(pending.discard)

        async def on_result(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal received
            await message.ack()
            received += 1
            if sent < n:
                publish()
            if received == n:
                done.set()

        await result_queue.consume(on_result)
        started = time.perf_counter()
        for _ in range(min(window, n)):
            publish()
        await asyncio.wait_for(done.wait(), 600)
        return time.perf_counter() - started


async def _delete(*names: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


def round_trips(n: int, *, window: int = 100) -> float:
    """Seconds for n round trips with `window` in flight (worker in its own process)."""
    tag = uuid.uuid4().hex[:10]
    tasks, results = f"bench-floor-{tag}-tasks", f"bench-floor-{tag}-results"
    context = multiprocessing.get_context("spawn")
    worker = context.Process(target=_worker_process, args=(tasks, results, window), daemon=True)
    worker.start()
    try:
        asyncio.run(_drive(min(n, 100), window, tasks, results))  # warm-up (and queues)
        return asyncio.run(_drive(n, window, tasks, results))
    finally:
        worker.terminate()
        worker.join(10)
        asyncio.run(_delete(tasks, results))
