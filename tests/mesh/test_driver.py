"""The run driver and the outbox relay, on a real SQLite store (no broker needed)."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import func, select

from fanflow.mesh.amqp import Publish
from fanflow.mesh.driver import DELAY_STEPS_MS, Envelope, RunDriver, delay_step_ms
from fanflow.mesh.relay import OutboxRelay
from fanflow.mesh.topology import Topology
from fanflow.messages import NodeTask
from fanflow.runtime import RunRequest
from fanflow.scheduler import Limits, TaskFinished
from fanflow.store import Store
from fanflow.store.schema import processed_messages

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_retry_delays_round_up_to_a_few_steps() -> None:
    assert delay_step_ms(0) == 0
    assert delay_step_ms(1) == 100
    assert delay_step_ms(1_000) == 1_000
    assert delay_step_ms(1_001) == 2_000
    assert delay_step_ms(10**9) == DELAY_STEPS_MS[-1]


async def _store(tmp_path: Path) -> Store:
    return await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")


async def test_a_finished_run_forgets_its_scratch_and_ignores_late_messages(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path)
    try:
        app_id = await store.create_app("hello", "workflow", (EXAMPLES / "hello.yml").read_text())
        app = await store.get_app(app_id)
        assert app is not None
        driver = RunDriver(store, Topology(namespace="t"), limits=Limits())
        first = await driver.start_run(app, "run-1", RunRequest(inputs={"name": "x"}))
        [message] = [m for _, m in await store.pending_outbox(ids=first) if m.kind == "task"]
        task = NodeTask.decode(message.body)
        done = task.result(status="succeeded", outputs={"shout": "X!", "length": 1})
        envelope = Envelope(TaskFinished(done), f"result:{task.task_id}")
        await driver.apply(app, "run-1", [envelope])
        run = await store.get_run("run-1")
        assert run is not None and run.status == "succeeded"
        assert await driver.apply(app, "run-1", [envelope]) == []  # late duplicate
        async with store.engine.connect() as connection:
            kept = await connection.scalar(select(func.count()).select_from(processed_messages))
        assert kept == 0
    finally:
        await store.close()


class _Broker:
    """Records publishes; refuses one message id as no broker ever could."""

    def __init__(self, refuse: str) -> None:
        self.topology = Topology(namespace="t")
        self.refuse = refuse
        self.published: list[str] = []

    async def publish_many(self, publications: list[Publish]) -> list[Exception | None]:
        outcomes: list[Exception | None] = []
        for publication in publications:
            if publication.message_id == self.refuse:
                outcomes.append(ValueError("cannot be published"))
            else:
                self.published.append(str(publication.message_id))
                outcomes.append(None)
        return outcomes


async def test_an_unpublishable_row_does_not_block_the_others(tmp_path: Path) -> None:
    from fanflow.store import OutboxMessage

    store = await _store(tmp_path)
    try:
        messages = [
            OutboxMessage(kind="control", routing="", body=json.dumps({}).encode(), message_id=m)
            for m in ("a", "bad", "c")
        ]
        ids = await store.add_outbox(messages)
        broker = _Broker(refuse="bad")
        relay = OutboxRelay(store, broker)  # type: ignore[arg-type]
        assert await relay.publish(ids) == 3
        assert broker.published == ["a", "c"]
        assert await store.pending_outbox() == []
    finally:
        await store.close()


async def test_a_task_node_execution_records_what_it_reads(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        app_id = await store.create_app("hello", "workflow", (EXAMPLES / "hello.yml").read_text())
        app = await store.get_app(app_id)
        assert app is not None
        driver = RunDriver(store, Topology(namespace="t"), limits=Limits())
        await driver.start_run(app, "run-1", RunRequest(inputs={"name": "x"}))
        [code] = [e for e in await store.list_node_executions("run-1") if e.node_type == "code"]
        assert code.status == "running" and code.attempts == 1
        assert code.inputs and "Hello, x!" in code.inputs.values()
    finally:
        await store.close()


class _Recording:
    """A broker that confirms everything and records what it was given, in order."""

    def __init__(self) -> None:
        self.topology = Topology(namespace="t")
        self.publications: list[Publish] = []

    async def publish_many(self, publications: list[Publish]) -> list[Exception | None]:
        self.publications.extend(publications)
        return [None] * len(publications)


async def test_a_step_publishes_rows_and_batched_progress_events_in_order(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path)
    try:
        app_id = await store.create_app("hello", "workflow", (EXAMPLES / "hello.yml").read_text())
        app = await store.get_app(app_id)
        assert app is not None
        driver = RunDriver(store, Topology(namespace="t"), limits=Limits())
        first = await driver.start_run(app, "run-1", RunRequest(inputs={"name": "x"}))
        # only the durable messages have outbox rows
        rows = await store.pending_outbox(ids=first)
        assert {m.kind for _, m in rows} == {"task", "event"}
        assert [m.routing for _, m in rows if m.kind == "event"] == ["run.run-1.workflow_started"]
        broker = _Recording()
        relay = OutboxRelay(store, broker)  # type: ignore[arg-type]
        await relay.publish(first)
        assert await store.pending_outbox() == []  # published rows are gone
        events = [p for p in broker.publications if p.exchange == broker.topology.events_exchange]
        assert events[0].routing_key == "run.run-1.workflow_started"
        assert all(e.routing_key == "run.run-1.batch" for e in events[1:])
        progress = [e["event"] for p in events[1:] for e in json.loads(p.body)["events"]]
        assert progress[0] == "node_started" and "node_finished" in progress

        [task] = [NodeTask.decode(m.body) for _, m in rows if m.kind == "task"]
        done = task.result(status="succeeded", outputs={"shout": "X!", "length": 1})
        last = await driver.apply(app, "run-1", [Envelope(TaskFinished(done), "r1")])
        broker.publications.clear()
        await relay.publish(last)
        names = [p.routing_key.rsplit(".", 1)[1] for p in broker.publications]
        assert names[-1] == "workflow_finished"  # after the progress of the same step
        assert "batch" in names[:-1]
    finally:
        await store.close()
