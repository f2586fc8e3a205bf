"""Signed results (fanflow.mesh.signing), attacked over the in-memory broker: a result
forged for another run — unsigned, signed with another key, or sent to the dead-result
queue — is dropped unapplied and counted, and the genuine result still completes the run.
Also the poison cases: an unencodable result fails its node at once, and a dead-lettered
task's failure states how often it was delivered. (Against RabbitMQ: test_result_signing_amqp.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from fanflow.mesh.aggregator import Aggregator
from fanflow.mesh.memory import MemoryBroker
from fanflow.mesh.signing import HEADER_SIGNATURE, ResultKey
from fanflow.mesh.topology import Topology
from fanflow.mesh.worker import Worker
from fanflow.messages import NodeTask, TaskResult
from fanflow.metrics import RESULTS_REJECTED
from fanflow.runtime import RunRequest
from fanflow.scheduler import Limits
from fanflow.settings import Settings
from fanflow.store import AppRecord, RunRecord, Store
from fanflow.vocabulary import FINISHED_STATUSES

HELLO = (Path(__file__).resolve().parents[2] / "examples" / "hello.yml").read_text()
KEY = ResultKey("k" * 32)


def rejected_count(queue: str, reason: str) -> float:
    return RESULTS_REJECTED.labels(queue, reason)._value.get()


class Harness:
    """A store, a memory broker, a verifying aggregator and a signing worker whose
    executor waits for `release` (so a forgery can arrive first)."""

    def __init__(self, store: Store, broker: MemoryBroker, app: AppRecord) -> None:
        self.store, self.broker, self.app = store, broker, app
        self.aggregator = Aggregator(
            store, broker, topology=broker.topology, limits=Limits(), result_key=KEY
        )
        self.tasks: asyncio.Queue[NodeTask] = asyncio.Queue()
        self.release = asyncio.Event()
        self.executions = 0
        self.outputs: dict[str, Any] | None = None
        self.raise_error = False
        self.background: list[asyncio.Task[None]] = []

    async def execute(self, task: NodeTask) -> TaskResult:
        self.executions += 1
        self.tasks.put_nowait(task)
        await self.release.wait()
        if self.raise_error:
            raise RuntimeError("the worker process died mid-task (simulated)")
        (greeting,) = [v for v in task.variables.values() if isinstance(v, str)]
        outputs = self.outputs or {"shout": greeting.upper(), "length": len(greeting)}
        return task.result(status="succeeded", outputs=outputs)

    async def start(self) -> None:
        worker = Worker(self.broker, self.execute, topology=self.broker.topology, result_key=KEY)
        self.background.append(await worker.start({"code": 2}))
        self.background += await self.aggregator.start(
            batch_size=10, max_wait_s=0.0, outbox_sweep_s=0.01, deadline_sweep_s=0.01
        )

    async def run(self, name: str) -> str:
        run_id = f"run-{name}"
        await self.aggregator.relay.publish(
            await self.aggregator.driver.start_run(
                self.app, run_id, RunRequest(inputs={"name": name})
            )
        )
        return run_id

    async def wait(self, run_id: str, timeout_s: float = 5.0) -> RunRecord:
        async with asyncio.timeout(timeout_s):
            while True:
                run = await self.store.get_run(run_id)
                if run is not None and run.status in FINISHED_STATUSES:
                    return run
                await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def harness(tmp_path: Path, *, delivery_limit: int = 5) -> AsyncIterator[Harness]:
    topology = Topology(namespace="signing", delivery_limit=delivery_limit)
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'mesh.db'}")
    try:
        async with MemoryBroker(topology=topology) as broker:
            await broker.declare()
            app = await store.get_app(await store.create_app("hello", "workflow", HELLO))
            assert app is not None
            h = Harness(store, broker, app)
            try:
                yield h
            finally:
                for task in h.background:
                    task.cancel()
                await asyncio.gather(*h.background, return_exceptions=True)
                await broker.drain(timeout_s=1)
    finally:
        await store.close()


def forged_for(task: NodeTask) -> TaskResult:
    return task.result(status="succeeded", outputs={"shout": "PWNED", "length": -1})


async def until(predicate: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_forged_results_are_dropped_and_counted_and_the_genuine_one_completes_the_run(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        await h.start()
        run_id = await h.run("victim")
        task = await asyncio.wait_for(h.tasks.get(), 5)  # the attacker read the task
        forged = forged_for(task)
        body = forged.encode()
        route = h.broker.topology.result_route()
        before = {r: rejected_count("results", r) for r in ("missing", "bad")}
        dead_before = rejected_count("dead_results", "bad")
        # unsigned, with the genuine message id (so the genuine result would be a duplicate)
        await h.broker.publish_raw(route.exchange, route.routing_key, body,
                                   message_id=h.broker.topology.result_message_id(task.task_id),
                                   headers=h.broker.topology.result_headers(forged))  # fmt: skip
        # signed with another deployment's key
        other = ResultKey("another deployment's key!")
        await h.broker.publish_raw(route.exchange, route.routing_key, body, message_id="f2",
                                   headers={**other.headers(body)})  # fmt: skip
        # a genuine signature of another body (a signature lifted from another result)
        lifted = KEY.headers(task.result(status="failed", error="x", error_type="X").encode())
        await h.broker.publish_raw(route.exchange, route.routing_key, body, message_id="f3",
                                   headers=lifted)  # fmt: skip
        # straight to the dead-result queue, which the aggregator applies too
        await h.broker.publish_raw("", h.broker.topology.dead_results_queue, body,
                                   message_id="f4", headers=other.headers(body))  # fmt: skip
        await until(
            lambda: (
                rejected_count("results", "missing") == before["missing"] + 1
                and rejected_count("results", "bad") == before["bad"] + 2
                and rejected_count("dead_results", "bad") == dead_before + 1
            )
        )
        run = await h.store.get_run(run_id)
        assert run is not None and run.status == "running", run
        [code] = [
            e for e in await h.store.list_node_executions(run_id) if e.node_id == task.node_id
        ]
        assert code.finished_at is None and code.status != "succeeded"  # still waiting
        h.release.set()  # the genuine result
        run = await h.wait(run_id)
        assert run.status == "succeeded", run.error
        assert run.outputs == {
            "greeting": "Hello, victim!",
            "shout": "HELLO, VICTIM!",
            "length": 14,
        }


async def test_the_worker_signs_the_body_it_publishes(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        seen: list[tuple[bytes, dict[str, Any]]] = []
        original = h.broker.publish_result

        async def spy(result: TaskResult, **kw: Any) -> None:
            seen.append((kw["body"], dict(kw["signature"] or {})))
            await original(result, **kw)

        h.broker.publish_result = spy  # type: ignore[method-assign]
        await h.start()
        h.release.set()
        assert (await h.wait(await h.run("sig"))).status == "succeeded"
        [(body, headers)] = seen
        assert KEY.check(body, headers) is None
        assert len(headers[HEADER_SIGNATURE]) == 64  # hex SHA-256
        assert KEY.check(body + b" ", headers) == "bad"


async def test_an_unencodable_result_fails_its_node_at_once(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.outputs = {"shout": "\ud800", "length": 1}  # a lone surrogate: not UTF-8
        await h.start()
        h.release.set()
        run = await h.wait(await h.run("poison"))
        assert run.status == "failed"
        assert "cannot be sent" in (run.error or "") and "1700000000003" in (run.error or "")
        [failed] = [e for e in await h.store.list_node_executions(run.id) if e.error]
        assert failed.status == "failed" and "JSON cannot carry" in failed.error
        assert h.executions == 1  # not redelivered, the code not run again


async def test_a_dead_lettered_task_states_its_true_delivery_count(tmp_path: Path) -> None:
    async with harness(tmp_path, delivery_limit=2) as h:
        h.raise_error = True
        h.release.set()
        await h.start()
        run = await h.wait(await h.run("crash"))
        assert run.status == "failed"
        assert h.executions == 3  # the first delivery and two redeliveries
        assert "after 3 deliveries" in (run.error or ""), run.error


def test_settings_refuse_a_missing_or_short_key_unless_insecure(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FANFLOW_RESULT_KEY"):
        Settings().result_signing_key()
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Settings(result_key=SecretStr("short")).result_signing_key()
    assert Settings(insecure_unsigned_results=True).result_signing_key() is None
    secret = tmp_path / "key"
    secret.write_text("s" * 40 + "\n")
    from_file = Settings(result_key_file=secret).result_signing_key()
    assert from_file is not None
    assert from_file.sign(b"x") == ResultKey("s" * 40).sign(b"x")
    assert "s" * 40 not in repr(Settings(result_key=SecretStr("s" * 40)))
