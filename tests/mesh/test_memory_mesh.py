"""The mesh's engine over the in-memory broker: driver, relay, worker and aggregator in one
process, on a SQLite store, in milliseconds (no RabbitMQ).

The worker runs the library's `Worker` with a stand-in executor (the code node's outputs
computed from what the task reads), so these tests are about the transport: outbox,
relay, dedupe, delivery limits and dead letters, stop broadcasts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fanflow.mesh.aggregator import Aggregator
from fanflow.mesh.memory import MemoryBroker
from fanflow.mesh.relay import OutboxRelay
from fanflow.mesh.topology import Topology
from fanflow.mesh.transport import BrokerError
from fanflow.mesh.worker import Worker
from fanflow.messages import NodeTask, TaskResult
from fanflow.runtime import RunRequest
from fanflow.scheduler import Limits
from fanflow.store import AppRecord, RunRecord, Store
from fanflow.vocabulary import FINISHED_STATUSES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HELLO = (EXAMPLES / "hello.yml").read_text()

Execute = Callable[[NodeTask], Coroutine[Any, Any, TaskResult]]


async def shout(task: NodeTask) -> TaskResult:
    """What hello.yml's code node computes, without a sandbox."""
    (greeting,) = [v for v in task.variables.values() if isinstance(v, str)]
    return task.result(
        status="succeeded", outputs={"shout": greeting.upper(), "length": len(greeting)}
    )


@dataclass
class Mesh:
    store: Store
    broker: MemoryBroker
    aggregator: Aggregator
    app: AppRecord
    executed: list[NodeTask]

    async def start_worker(self, execute: Execute = shout) -> Worker:
        async def recording(task: NodeTask) -> TaskResult:
            self.executed.append(task)
            return await execute(task)

        worker = Worker(self.broker, recording, topology=self.broker.topology)
        self.listeners.append(await worker.start({"code": 2}))
        return worker

    async def start_aggregator(self) -> None:
        self.sweepers += await self.aggregator.start(
            batch_size=10, max_wait_s=0.0, outbox_sweep_s=0.01, deadline_sweep_s=0.01
        )

    async def start_run(self, inputs: dict[str, Any], run_id: str = "run-1") -> None:
        """Start a run as the trigger does: commit it, then publish its outbox rows."""
        committed = await self.aggregator.driver.start_run(
            self.app, run_id, RunRequest(inputs=inputs)
        )
        await self.aggregator.relay.publish(committed)

    async def wait(self, run_id: str, *, timeout_s: float = 5.0) -> RunRecord:
        async with asyncio.timeout(timeout_s):
            while True:
                run = await self.store.get_run(run_id)
                if run is not None and run.status in FINISHED_STATUSES:
                    return run
                await asyncio.sleep(0.005)

    async def wait_published(self, *, timeout_s: float = 5.0) -> None:
        """Until the outbox is empty (the relay publishes after commit)."""
        async with asyncio.timeout(timeout_s):
            while await self.store.pending_outbox():
                await asyncio.sleep(0.005)

    def __post_init__(self) -> None:
        self.listeners: list[asyncio.Task[None]] = []
        self.sweepers: list[asyncio.Task[None]] = []


@contextlib.asynccontextmanager
async def mesh(
    tmp_path: Path, *, delivery_limit: int = 5, limits: Limits | None = None
) -> AsyncIterator[Mesh]:
    topology = Topology(namespace="memory", delivery_limit=delivery_limit)
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'mesh.db'}")
    try:
        async with MemoryBroker(topology=topology) as broker:
            await broker.declare()
            app = await store.get_app(await store.create_app("hello", "workflow", HELLO))
            assert app is not None
            aggregator = Aggregator(store, broker, topology=topology, limits=limits or Limits())
            running = Mesh(store, broker, aggregator, app, [])
            try:
                yield running
            finally:
                background = running.listeners + running.sweepers
                for task in background:
                    task.cancel()
                # a sweep cancelled mid-transaction must end before the store closes
                await asyncio.gather(*background, return_exceptions=True)
                await broker.drain(timeout_s=1)
    finally:
        await store.close()


async def test_a_run_goes_driver_relay_worker_aggregator_and_ends(tmp_path: Path) -> None:
    async with mesh(tmp_path) as m:
        await m.start_worker()
        await m.start_aggregator()
        await m.start_run({"name": "mesh"})
        run = await m.wait("run-1")
        assert run.status == "succeeded"
        assert run.outputs == {"greeting": "Hello, mesh!", "shout": "HELLO, MESH!", "length": 12}
        assert [t.node_type for t in m.executed] == ["code"]
        await m.wait_published()


async def test_rows_committed_but_never_published_go_out_after_a_restart(
    tmp_path: Path,
) -> None:
    async with mesh(tmp_path) as m:
        await m.start_worker()
        # the trigger committed the run, then died before publishing its outbox rows
        await m.aggregator.driver.start_run(m.app, "run-1", RunRequest(inputs={"name": "x"}))
        pending = await m.store.pending_outbox()
        assert {message.kind for _, message in pending} == {"task", "event"}
        await asyncio.sleep(0.02)
        assert m.executed == []  # nothing reached the broker
        # a (new) aggregator recovers them at start, before consuming
        await m.start_aggregator()
        run = await m.wait("run-1")
        assert run.status == "succeeded"
        assert len(m.executed) == 1
        await m.wait_published()


async def test_a_failed_publish_leaves_the_rows_to_the_sweep(tmp_path: Path) -> None:
    async with mesh(tmp_path) as m:
        committed = await m.aggregator.driver.start_run(
            m.app, "run-1", RunRequest(inputs={"name": "x"})
        )
        # the broker loses its topology: the task is unroutable, the row must stay
        await m.broker.delete_topology()
        with pytest.raises(BrokerError):
            await m.aggregator.relay.publish(committed)
        assert any(message.kind == "task" for _, message in await m.store.pending_outbox())
        await m.broker.declare()
        await m.start_worker()
        relay = OutboxRelay(m.store, m.broker)
        assert await relay.sweep(grace_s=0) >= 1
        await m.start_aggregator()
        assert (await m.wait("run-1")).status == "succeeded"


async def test_a_duplicated_result_is_applied_once(tmp_path: Path) -> None:
    async with mesh(tmp_path) as m:
        worker = await m.start_worker()
        worker.duplicate_results = True
        await m.start_aggregator()
        await m.start_run({"name": "x"})
        run = await m.wait("run-1")
        await asyncio.sleep(0.02)  # let the duplicate arrive
        assert run.status == "succeeded" and run.total_steps == (await m.wait("run-1")).total_steps
        [code] = [e for e in await m.store.list_node_executions("run-1") if e.node_type == "code"]
        assert code.status == "succeeded" and code.attempts == 1


async def test_a_task_past_its_delivery_limit_fails_its_node_and_the_run(tmp_path: Path) -> None:
    async def crash(task: NodeTask) -> TaskResult:
        raise RuntimeError("the worker process died mid-task")

    async with mesh(tmp_path, delivery_limit=2) as m:
        await m.start_worker(crash)
        await m.start_aggregator()
        await m.start_run({"name": "x"})
        run = await m.wait("run-1")
        # first delivery + 2 requeues allowed, then the broker dead-letters it
        assert len(m.executed) == 3
        assert run.status == "failed"
        assert "the task was dead-lettered" in (run.error or "")
        failed = [e for e in await m.store.list_node_executions("run-1") if e.status == "failed"]
        assert [e.node_type for e in failed] == ["code"]


async def test_a_rejected_task_is_dead_lettered_at_once(tmp_path: Path) -> None:
    async def poison(task: NodeTask) -> TaskResult:
        from fanflow.errors import DecodeError

        raise DecodeError("not a task this worker can read")

    async with mesh(tmp_path) as m:
        await m.start_worker(poison)
        await m.start_aggregator()
        await m.start_run({"name": "x"})
        run = await m.wait("run-1")
        assert len(m.executed) == 1
        assert run.status == "failed" and "dead-lettered" in (run.error or "")


async def test_a_stop_cancels_the_running_task_and_drops_the_result(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow(task: NodeTask) -> TaskResult:
        started.set()
        await asyncio.sleep(30)
        return await shout(task)

    async with mesh(tmp_path) as m:
        await m.start_worker(slow)
        await m.start_aggregator()
        await m.start_run({"name": "x"})
        await asyncio.wait_for(started.wait(), 5)
        from fanflow.mesh.driver import Envelope
        from fanflow.scheduler import StopRequested

        stopped = await m.aggregator.driver.apply(m.app, "run-1", [Envelope(StopRequested())])
        await m.aggregator.relay.publish(stopped)
        run = await m.wait("run-1")
        assert run.status == "stopped"
        await asyncio.sleep(0.02)  # the cancelled task published nothing
        assert await m.broker.message_count(m.broker.topology.results_queue) == 0


async def test_an_overdue_run_is_ended_by_the_deadline_sweep(tmp_path: Path) -> None:
    async with mesh(tmp_path, limits=Limits(max_run_seconds=0.05)) as m:
        # no worker: the task waits in its queue while the deadline passes
        await m.start_aggregator()
        await m.start_run({"name": "x"})
        run = await m.wait("run-1")
        assert run.status == "stopped"
        assert run.error and "0.05" in run.error, run.error
