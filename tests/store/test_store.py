"""The store's contract, on real SQLite and real PostgreSQL (one parametrized fixture)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from fanflow.scheduler.protocol import RecordItem
from fanflow.scheduler.state import RunState, dump_state, load_state
from fanflow.store import (
    AppNotFound,
    OutboxMessage,
    RunExists,
    RunNotFound,
    Store,
    StoredItem,
    StoreError,
    migrate,
)
from fanflow.store.schema import api_keys, metadata
from tests.conftest import fresh_postgres_database

BACKENDS = ["sqlite", "postgresql"]


class Boom(Exception):
    pass


def _sqlite_url(directory: Path) -> str:
    return f"sqlite+aiosqlite:///{directory / 'fanflow.db'}"


@pytest.fixture(scope="module", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One empty database per backend for the whole module (created and dropped here)."""
    if request.param == "sqlite":
        yield _sqlite_url(tmp_path_factory.mktemp("store"))
        return
    with fresh_postgres_database("fanflow_store") as url:
        yield url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def app_id(store: Store) -> str:
    return await store.create_app("demo", "workflow", "app: {mode: workflow}")


def _state(run_id: str, steps: int = 0) -> bytes:
    return dump_state(RunState(run_id=run_id, steps=steps))


def _message(message_id: str, routing: str = "tasks.code") -> OutboxMessage:
    return OutboxMessage(
        kind="task",
        routing=routing,
        body=message_id.encode(),
        message_id=message_id,
        headers={"x-run": "r"},
        delay_ms=0,
    )


async def _new_run(store: Store, app_id: str, **options: Any) -> str:
    run_id = f"run-{uuid.uuid4().hex}"
    await store.create_run(run_id, app_id, inputs={}, state=_state(run_id), **options)
    return run_id


# ---- schema --------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def empty_database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: Callable[[], str]
) -> str:
    return _sqlite_url(tmp_path) if request.param == "sqlite" else postgres_url()


async def test_migrations_from_empty_match_the_schema(empty_database_url: str) -> None:
    await migrate(empty_database_url)
    await migrate(empty_database_url)  # nothing left to do the second time
    store = await Store.open(empty_database_url, migrate=False)
    try:
        async with store.engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
            differences = await connection.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(c, opts={"compare_type": True}), metadata
                )
            )
    finally:
        await store.close()
    assert tables == {*metadata.tables, "alembic_version"}
    assert version == "0004"
    assert differences == []


# ---- apps and keys -------------------------------------------------------------------


async def test_api_keys_are_stored_hashed(store: Store, app_id: str) -> None:
    app = await store.get_app(app_id)
    assert app is not None and (app.name, app.mode) == ("demo", "workflow")

    key = await store.issue_api_key(app_id)
    other = await store.issue_api_key(app_id)
    assert key.startswith("app-") and len(key) > 20 and key != other

    found = await store.app_for_key(key)
    assert found == app
    assert await store.app_for_key(key + "x") is None
    assert await store.app_for_key("app-unknown") is None

    async with store.engine.connect() as connection:
        rows = (await connection.execute(select(api_keys))).all()
    stored = [str(value) for row in rows for value in row]
    assert not any(key in value or other in value for value in stored)
    assert hashlib.sha256(key.encode()).hexdigest() in stored

    with pytest.raises(AppNotFound):
        await store.issue_api_key("no-such-app")
    assert await store.get_app("no-such-app") is None


# ---- runs ----------------------------------------------------------------------------


async def test_create_run_writes_run_outbox_and_items_together(store: Store, app_id: str) -> None:
    run_id = f"run-{uuid.uuid4().hex}"
    messages = [_message(f"{run_id}/a"), _message(f"{run_id}/b", "tasks.llm")]
    ids = await store.create_run(
        run_id,
        app_id,
        inputs={"q": "hi"},
        user="alice",
        state=_state(run_id),
        outbox=messages,
        items=[RecordItem("it", 1, "one"), RecordItem("it", 0, "zero")],
    )
    run = await store.get_run(run_id, with_state=True)
    assert run is not None
    assert (run.status, run.inputs, run.user, run.version) == ("running", {"q": "hi"}, "alice", 0)
    assert load_state(run.state or b"").run_id == run_id
    assert (await store.get_run(run_id)).state is None  # type: ignore[union-attr]

    pending = await store.pending_outbox(run_id=run_id)
    assert [outbox_id for outbox_id, _ in pending] == ids
    assert [message for _, message in pending] == messages
    async with store.run_transaction(run_id) as tx:
        assert await tx.collect_items("it") == [
            StoredItem(0, "zero", False),
            StoredItem(1, "one", False),
        ]

    with pytest.raises(RunExists):
        await store.create_run(
            run_id, app_id, inputs={}, state=b"{}", outbox=[_message(f"{run_id}/c")]
        )
    with pytest.raises(AppNotFound):
        await store.create_run(
            f"{run_id}-x", app_id="nope", inputs={}, state=b"{}", outbox=[_message("x")]
        )
    assert len(await store.pending_outbox(run_id=run_id)) == 2
    assert await store.get_run(f"{run_id}-x") is None


async def test_creating_run_rolls_back_entirely(store: Store, app_id: str) -> None:
    run_id = f"run-{uuid.uuid4().hex}"
    with pytest.raises(Boom):
        async with store.creating_run(run_id, app_id, inputs={}, state=_state(run_id)) as tx:
            await tx.add_outbox([_message(f"{run_id}/a")])
            await tx.upsert_node_execution(node_id="start", node_type="start", status="succeeded")
            raise Boom
    assert await store.get_run(run_id) is None
    assert await store.pending_outbox(run_id=run_id) == []
    assert await store.list_node_executions(run_id) == []


async def test_run_transaction_rolls_back_on_exception(store: Store, app_id: str) -> None:
    run_id = await _new_run(store, app_id)
    with pytest.raises(Boom):
        async with store.run_transaction(run_id) as tx:
            assert await tx.seen("m1") is False
            await tx.record_item("it", 0, "v")
            await tx.upsert_node_execution(node_id="n", node_type="code", status="running")
            await tx.add_outbox([_message(f"{run_id}/n")])
            await tx.save(
                _state(run_id, steps=9),
                status="failed",
                outputs={"x": 1},
                error="no",
                total_steps=9,
                total_tokens=1,
                exceptions_count=1,
                finished_at=1.0,
            )
            assert (tx.status, tx.version) == ("failed", 1)
            raise Boom

    run = await store.get_run(run_id, with_state=True)
    assert run is not None
    assert (run.status, run.version, run.outputs, run.total_steps) == ("running", 0, None, 0)
    assert run.state == _state(run_id)
    assert await store.pending_outbox(run_id=run_id) == []
    assert await store.list_node_executions(run_id) == []
    async with store.run_transaction(run_id) as tx:
        assert await tx.seen("m1") is False
        assert await tx.collect_items("it") == []


async def test_save_updates_the_run(store: Store, app_id: str) -> None:
    run_id = await _new_run(store, app_id)
    async with store.run_transaction(run_id) as tx:
        assert (tx.run_id, tx.app_id, tx.status) == (run_id, app_id, "running")
        await tx.save(
            _state(run_id, steps=3),
            status="succeeded",
            outputs={"answer": 42},
            error=None,
            total_steps=3,
            total_tokens=120,
            exceptions_count=1,
            finished_at=100.5,
            elapsed_time=2.5,
        )
        assert tx.state() == _state(run_id, steps=3)
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.outputs, run.total_steps, run.total_tokens) == (
        "succeeded",
        {"answer": 42},
        3,
        120,
    )
    assert (run.exceptions_count, run.finished_at, run.elapsed_time, run.version) == (
        1,
        100.5,
        2.5,
        1,
    )
    async with store.run_transaction(run_id) as tx:
        assert load_state(tx.state()).steps == 3
    with pytest.raises(StoreError):
        await tx.seen("late")  # the transaction is over


async def test_unknown_run_is_refused(store: Store) -> None:
    with pytest.raises(RunNotFound):
        async with store.run_transaction("no-such-run"):
            pass


async def test_seen_dedupes_within_and_across_transactions(store: Store, app_id: str) -> None:
    run_id = await _new_run(store, app_id)
    async with store.run_transaction(run_id) as tx:
        assert await tx.seen(f"{run_id}/a/0") is False
        assert await tx.seen(f"{run_id}/a/0") is True
    async with store.run_transaction(run_id) as tx:
        assert await tx.seen(f"{run_id}/a/0") is True
        assert await tx.seen(f"{run_id}/a/1") is False


async def test_items_collect_in_index_order_and_rerecord_overwrites(
    store: Store, app_id: str
) -> None:
    run_id = await _new_run(store, app_id)
    async with store.run_transaction(run_id) as tx:
        for index in (3, 0, 2):
            await tx.record_item("outer|it", index, {"i": index})
        await tx.record_item("other|it", 0, "elsewhere")
    async with store.run_transaction(run_id) as tx:
        await tx.record_item("outer|it", 2, {"i": "again"})  # redelivered result
        await tx.record_item("outer|it", 1, None, removed=True)
        await tx.record_items(RecordItem("outer|it", i, i) for i in range(4, 1004))
    async with store.run_transaction(run_id) as tx:
        items = await tx.collect_items("outer|it")
        assert items[:4] == [
            StoredItem(0, {"i": 0}, False),
            StoredItem(1, None, True),
            StoredItem(2, {"i": "again"}, False),
            StoredItem(3, {"i": 3}, False),
        ]
        assert [item.index for item in items] == list(range(1004))
        assert await tx.collect_items("outer|it") == []
        assert await tx.collect_items("other|it") == [StoredItem(0, "elsewhere", False)]


async def test_node_executions_upsert(store: Store, app_id: str) -> None:
    run_id = await _new_run(store, app_id)
    async with store.run_transaction(run_id) as tx:
        await tx.upsert_node_execution(
            node_id="llm", node_type="llm", title="LLM", status="running", inputs={"q": 1},
            started_at=10.0,
        )  # fmt: skip
        await tx.upsert_node_execution(
            node_id="code", node_type="code", scope="it#0", status="failed", error="boom",
            attempts=1,
        )  # fmt: skip
    async with store.run_transaction(run_id) as tx:
        execution_id = await tx.upsert_node_execution(
            node_id="llm", node_type="llm", title="LLM", status="succeeded", outputs={"t": "x"},
            attempts=2, total_tokens=7, finished_at=12.0,
        )  # fmt: skip
        assert execution_id == f"{run_id}//llm"
        await tx.upsert_node_execution(
            node_id="code", node_type="code", scope="it#0", status="succeeded", attempts=2
        )
    llm, code = await store.list_node_executions(run_id)
    assert (llm.status, llm.inputs, llm.outputs, llm.attempts, llm.total_tokens) == (
        "succeeded",
        {"q": 1},
        {"t": "x"},
        2,
        7,
    )
    assert (llm.started_at, llm.finished_at, llm.title) == (10.0, 12.0, "LLM")
    assert (code.id, code.scope, code.status, code.error) == (
        f"{run_id}/it#0/code",
        "it#0",
        "succeeded",
        None,
    )


# ---- concurrency ---------------------------------------------------------------------


async def test_transactions_on_one_run_serialize(store: Store, app_id: str) -> None:
    run_id = await _new_run(store, app_id)

    async def increment(times: int) -> None:
        for _ in range(times):
            async with store.run_transaction(run_id) as tx:
                state = load_state(tx.state())
                await asyncio.sleep(0)  # let the other task try to interleave
                state.steps += 1
                await tx.save(
                    dump_state(state),
                    status="running",
                    outputs=None,
                    error=None,
                    total_steps=state.steps,
                    total_tokens=0,
                    exceptions_count=0,
                )

    await asyncio.gather(increment(50), increment(50))
    run = await store.get_run(run_id, with_state=True)
    assert run is not None
    assert load_state(run.state or b"").steps == 100
    assert (run.total_steps, run.version) == (100, 100)


async def test_a_held_run_blocks_only_what_the_backend_must(store: Store, app_id: str) -> None:
    """PostgreSQL locks one run row, so other runs proceed; SQLite has one writer at a time."""
    held, other = await _new_run(store, app_id), await _new_run(store, app_id)

    async def touch(run_id: str) -> None:
        async with store.run_transaction(run_id) as tx:
            await tx.seen(f"{run_id}/touched")

    async with store.run_transaction(held):
        same = asyncio.create_task(touch(held))
        different = asyncio.create_task(touch(other))
        await asyncio.sleep(0.3)
        assert not same.done()
        assert different.done() is (store.engine.dialect.name == "postgresql")
    await asyncio.wait_for(asyncio.gather(same, different), timeout=10)


# ---- listing -------------------------------------------------------------------------


async def test_list_runs_pages_and_filters(store: Store, app_id: str) -> None:
    other_app = await store.create_app("other", "workflow", "")
    await _new_run(store, other_app)
    created = []
    for number in range(5):
        run_id = f"run-{uuid.uuid4().hex}"
        await store.create_run(
            run_id,
            app_id,
            inputs={"topic": "Ünïcode 100%" if number == 3 else f"topic {number}"},
            user=f"user-{number}",
            state=b"{}",
            status="succeeded" if number % 2 else "running",
            created_at=1000.0 + number,
        )
        created.append(run_id)
    newest_first = created[::-1]

    page, total = await store.list_runs(app_id, page=1, limit=2)
    assert ([run.id for run in page], total) == (newest_first[:2], 5)
    page, total = await store.list_runs(app_id, page=3, limit=2)
    assert ([run.id for run in page], total) == (newest_first[4:], 5)
    assert (await store.list_runs(app_id, page=4, limit=2)) == ([], 5)

    page, total = await store.list_runs(app_id, status="succeeded")
    assert ([run.id for run in page], total) == ([created[3], created[1]], 2)
    page, total = await store.list_runs(app_id, keyword="ÜNÏCODE")
    assert [run.id for run in page] == [created[3]]
    page, total = await store.list_runs(app_id, keyword="100%")
    assert [run.id for run in page] == [created[3]]
    assert (await store.list_runs(app_id, keyword="0%")) == (page, 1)
    page, total = await store.list_runs(app_id, keyword="user-2")
    assert [run.id for run in page] == [created[2]]
    assert (await store.list_runs(app_id, keyword="_")) == ([], 0)  # not a wildcard

    assert await store.count_running(app_id) == 3
    assert await store.count_running(other_app) == 1
    with pytest.raises(ValueError):
        await store.list_runs(app_id, page=0)


# ---- outbox --------------------------------------------------------------------------


async def test_outbox_pending_and_published(store: Store, app_id: str) -> None:
    run_id = await _new_run(store, app_id, outbox=[_message("first")])
    async with store.run_transaction(run_id) as tx:
        ids = await tx.add_outbox([_message(f"m{i}") for i in range(5)])
    assert len(ids) == 5 and ids == sorted(ids)

    pending = await store.pending_outbox(run_id=run_id, limit=3)
    assert [message.message_id for _, message in pending] == ["first", "m0", "m1"]
    await store.mark_published([outbox_id for outbox_id, _ in pending])
    pending = await store.pending_outbox(run_id=run_id)
    assert [outbox_id for outbox_id, _ in pending] == ids[2:]

    control_run = f"gone-{uuid.uuid4().hex}"
    stop = OutboxMessage("control", "control", b"stop", f"{control_run}/stop", {"a": [1]}, 250)
    (control_id,) = await store.add_outbox([stop], run_id=control_run)
    assert await store.pending_outbox(run_id=control_run) == [(control_id, stop)]
    assert (control_id, stop) in await store.pending_outbox(limit=10_000)

    await store.mark_published([*ids, control_id])
    await store.mark_published([])
    assert await store.pending_outbox(run_id=run_id) == []
    assert await store.pending_outbox(run_id=control_run) == []


# ---- bulk writes ---------------------------------------------------------------------


async def test_buffered_writes_are_seen_in_the_transaction_and_written_at_commit(
    store: Store, app_id: str
) -> None:
    run_id = await _new_run(store, app_id)
    async with store.run_transaction(run_id) as tx:
        await tx.record_items(RecordItem("it", i, i) for i in range(3))
    async with store.run_transaction(run_id) as tx:
        assert await tx.seen_many([f"{run_id}/a", f"{run_id}/b", f"{run_id}/a"]) == [
            False,
            False,
            True,  # a duplicate within one batch
        ]
        await tx.record_item("it", 1, "again")  # overwrites the stored item, unwritten yet
        await tx.record_item("it", 5, 5)
        assert await tx.collect_items("it") == [
            StoredItem(0, 0, False),
            StoredItem(1, "again", False),
            StoredItem(2, 2, False),
            StoredItem(5, 5, False),
        ]
        await tx.record_item("it", 7, 7)  # recorded after the collect: written at commit
        # two events for one node in one transaction merge as two upserts would
        await tx.upsert_node_execution(
            node_id="n", node_type="llm", status="running", inputs={"q": 1}, started_at=1.0
        )
        await tx.upsert_node_execution(
            node_id="n", node_type="llm", status="succeeded", outputs={"a": 2}, finished_at=2.0,
            attempts=1,
        )  # fmt: skip
    async with store.run_transaction(run_id) as tx:
        assert await tx.seen_many([f"{run_id}/b", f"{run_id}/c"]) == [True, False]
        assert await tx.collect_items("it") == [StoredItem(7, 7, False)]
    [node] = await store.list_node_executions(run_id)
    assert (node.status, node.inputs, node.outputs, node.started_at, node.finished_at) == (
        "succeeded",
        {"q": 1},
        {"a": 2},
        1.0,
        2.0,
    )


async def test_many_node_executions_in_one_transaction(store: Store, app_id: str) -> None:
    run_id = await _new_run(store, app_id)
    async with store.run_transaction(run_id) as tx:
        for i in range(1500):  # more than one page of a multi-row insert
            await tx.upsert_node_execution(
                node_id="n", node_type="code", scope=f"it#{i}", status="running", inputs={"i": i}
            )
    async with store.run_transaction(run_id) as tx:
        for i in range(0, 1500, 2):
            await tx.upsert_node_execution(
                node_id="n", node_type="code", scope=f"it#{i}", status="succeeded",
                outputs={"y": i},
            )  # fmt: skip
    executions = {e.scope: e for e in await store.list_node_executions(run_id)}
    assert len(executions) == 1500
    assert (executions["it#4"].status, executions["it#4"].inputs) == ("succeeded", {"i": 4})
    assert executions["it#4"].outputs == {"y": 4}
    assert (executions["it#5"].status, executions["it#5"].outputs) == ("running", None)
