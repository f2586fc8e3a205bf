"""The store: the one place that talks SQL. PostgreSQL and SQLite through the same Core code."""

from __future__ import annotations

import hashlib
import secrets
import string
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Text, cast, delete, func, or_, select
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fanflow.scheduler.state import RUNNING
from fanflow.store._engine import make_engine, write_transaction
from fanflow.store._statements import statements_for
from fanflow.store.batches import Batches
from fanflow.store.conversations import Conversations
from fanflow.store.idempotency import IdempotencyKeys
from fanflow.store.migrate import upgrade
from fanflow.store.records import (
    AppBusy,
    AppNotFound,
    AppRecord,
    ItemLike,
    NodeExecutionRecord,
    OutboxMessage,
    RunExists,
    RunNotFound,
    RunRecord,
)
from fanflow.store.schema import api_keys, apps, node_executions, outbox, runs
from fanflow.store.transaction import RunTransaction, add_outbox

API_KEY_PREFIX = "app-"
_KEY_ALPHABET = string.ascii_letters + string.digits
_KEY_LENGTH = 24
_DELETE_CHUNK = 1000

_RUN_COLUMNS = [column for column in runs.c if column.name != "state"]


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _app(row: Row[Any]) -> AppRecord:
    return AppRecord(row.id, row.name, row.mode, row.dsl, row.created_at)


def _run(row: Row[Any]) -> RunRecord:
    state = row._mapping.get("state")
    return RunRecord(
        id=row.id,
        app_id=row.app_id,
        status=row.status,
        inputs=row.inputs,
        outputs=row.outputs,
        error=row.error,
        user=row.end_user,
        total_steps=row.total_steps,
        total_tokens=row.total_tokens,
        exceptions_count=row.exceptions_count,
        created_at=row.created_at,
        finished_at=row.finished_at,
        elapsed_time=row.elapsed_time,
        version=row.version,
        state=None if state is None else bytes(state),
        redrive_count=row._mapping.get("redrive_count") or 0,
    )


def _like(keyword: str) -> str:
    escaped = keyword.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class Store:
    """Durable state of apps and runs, the dedupe record and the outbox.

    Open with `await Store.open(url)` (`sqlite+aiosqlite:///path.db` or
    `postgresql+asyncpg://...`); it migrates the schema unless told not to. Every method
    is one transaction; `run_transaction` groups a scheduler step's changes into one.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        #: chatflow conversations, their messages and variables
        self.conversations = Conversations(engine)
        #: `Idempotency-Key` claims of submits, callback deliveries of async runs
        self.idempotency = IdempotencyKeys(engine)
        #: batch runs: one run per row of an uploaded file
        self.batches = Batches(engine)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, **engine_options: Any) -> Store:
        """Connect (and migrate to the newest schema); `engine_options` go to SQLAlchemy."""
        engine = make_engine(url, **engine_options)
        try:
            if migrate:
                await upgrade(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> str | None:
        """None when the database answers a trivial query; else what went wrong."""
        try:
            async with self.engine.connect() as connection:
                await connection.execute(select(1))
        except Exception as exc:
            return f"database unreachable: {type(exc).__name__}: {exc}"
        return None

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- apps -------------------------------------------------------------------------

    async def create_app(self, name: str, mode: str, dsl: str, *, app_id: str | None = None) -> str:
        """Register an app (its DSL as given); returns its id."""
        app_id = app_id or str(uuid.uuid4())
        async with write_transaction(self.engine) as connection:
            await connection.execute(
                apps.insert().values(
                    id=app_id, name=name, mode=mode, dsl=dsl, created_at=time.time()
                )
            )
        return app_id

    async def get_app(self, app_id: str) -> AppRecord | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(apps).where(apps.c.id == app_id))).first()
        return None if row is None else _app(row)

    async def issue_api_key(self, app_id: str) -> str:
        """A new `app-...` key for the app. The plaintext is returned once and never stored."""
        key = API_KEY_PREFIX + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_LENGTH))
        async with write_transaction(self.engine) as connection:
            found = await connection.scalar(select(apps.c.id).where(apps.c.id == app_id))
            if found is None:
                raise AppNotFound(f"no app {app_id!r} to issue an API key for")
            await connection.execute(
                api_keys.insert().values(
                    key_hash=hash_api_key(key),
                    app_id=app_id,
                    prefix=key[: len(API_KEY_PREFIX) + 4],
                    created_at=time.time(),
                )
            )
        return key

    async def app_for_key(self, key: str) -> AppRecord | None:
        """The app a key belongs to, or None for an unknown key."""
        statement = (
            select(apps)
            .join(api_keys, api_keys.c.app_id == apps.c.id)
            .where(api_keys.c.key_hash == hash_api_key(key))
        )
        async with self.engine.connect() as connection:
            row = (await connection.execute(statement)).first()
        return None if row is None else _app(row)

    # ---- runs -------------------------------------------------------------------------

    async def create_run(
        self,
        run_id: str,
        app_id: str,
        *,
        inputs: dict[str, Any],
        state: bytes,
        status: str = RUNNING,
        user: str | None = None,
        outbox: Sequence[OutboxMessage] = (),
        items: Iterable[ItemLike] = (),
        created_at: float | None = None,
    ) -> list[int]:
        """Create a run with its first outbox messages (and recorded items), atomically.

        Returns the outbox ids. Raises `RunExists` for a duplicate id. For more in the same
        transaction (node executions, collecting items) use `creating_run`.
        """
        async with self.creating_run(
            run_id,
            app_id,
            inputs=inputs,
            state=state,
            status=status,
            user=user,
            created_at=created_at,
        ) as tx:
            await tx.record_items(items)
            return await tx.add_outbox(outbox)

    @asynccontextmanager
    async def creating_run(
        self,
        run_id: str,
        app_id: str,
        *,
        inputs: dict[str, Any],
        state: bytes,
        status: str = RUNNING,
        user: str | None = None,
        created_at: float | None = None,
        max_running: int | None = None,
    ) -> AsyncIterator[RunTransaction]:
        """Like `run_transaction`, for a run inserted by this very transaction.

        With `max_running`, raises `AppBusy` when the app has that many runs running
        already. The count and the insert are atomic: the app's row is locked for the
        transaction on PostgreSQL (SQLite's write transactions are serialized already).
        """
        async with write_transaction(self.engine) as connection:
            if await connection.scalar(select(runs.c.id).where(runs.c.id == run_id)):
                raise RunExists(f"run {run_id!r} exists already")
            find_app = select(apps.c.id).where(apps.c.id == app_id)
            if max_running is not None:
                # concurrent creators of the app's runs queue here until this one commits
                find_app = find_app.with_for_update(key_share=True)
            if not await connection.scalar(find_app):
                raise AppNotFound(f"no app {app_id!r} to create run {run_id!r} in")
            if max_running is not None:
                running = await self._count_running(connection, app_id)
                if running >= max_running:
                    raise AppBusy(
                        f"app {app_id!r} has {running} run(s) in progress (at most {max_running})",
                        running=running,
                    )
            insert = runs.insert().values(
                id=run_id,
                app_id=app_id,
                status=status,
                inputs=inputs,
                outputs=None,
                error=None,
                state=state,
                end_user=user,
                total_steps=0,
                total_tokens=0,
                exceptions_count=0,
                created_at=time.time() if created_at is None else created_at,
                finished_at=None,
                elapsed_time=None,
                version=0,
            )
            try:
                await connection.execute(insert)
            except IntegrityError as exc:  # lost a race with a concurrent create
                raise RunExists(f"run {run_id!r} exists already") from exc
            async with self._locked(connection, run_id) as tx:
                yield tx

    @asynccontextmanager
    async def run_transaction(self, run_id: str) -> AsyncIterator[RunTransaction]:
        """`async with store.run_transaction(run_id) as tx:` lock the run, change it, commit.

        Raises `RunNotFound` on entry for an unknown run. An exception in the block rolls
        back everything done through `tx`.
        """
        async with (
            write_transaction(self.engine) as connection,
            self._locked(connection, run_id) as tx,
        ):
            yield tx

    @asynccontextmanager
    async def _locked(
        self, connection: AsyncConnection, run_id: str
    ) -> AsyncIterator[RunTransaction]:
        statement = statements_for(connection.dialect.name).lock_run
        row = (await connection.execute(statement, {"run_id": run_id})).first()
        if row is None:
            raise RunNotFound(f"no run {run_id!r}")
        tx = RunTransaction(connection, row)
        try:
            yield tx
            await tx._flush()  # the buffered writes, in bulk, before the commit
        finally:
            tx._close()

    async def get_run(self, run_id: str, *, with_state: bool = False) -> RunRecord | None:
        columns = list(runs.c) if with_state else _RUN_COLUMNS
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(*columns).where(runs.c.id == run_id))).first()
        return None if row is None else _run(row)

    async def list_runs(
        self,
        app_id: str,
        *,
        status: str | None = None,
        keyword: str | None = None,
        page: int = 1,
        limit: int = 20,
    ) -> tuple[list[RunRecord], int]:
        """One page of an app's runs, newest first, and the total matching (Dify's logs).

        `keyword` matches (case-insensitively) the run id, user, inputs or outputs.
        """
        if page < 1 or limit < 1:
            raise ValueError(f"page and limit must be >= 1, got page={page} limit={limit}")
        where = [runs.c.app_id == app_id]
        if status is not None:
            where.append(runs.c.status == status)
        if keyword:
            pattern = _like(keyword)
            where.append(
                or_(
                    *(
                        column.ilike(pattern, escape="\\")
                        for column in (
                            runs.c.id,
                            runs.c.end_user,
                            cast(runs.c.inputs, Text),
                            cast(runs.c.outputs, Text),
                        )
                    )
                )
            )
        page_query = (
            select(*_RUN_COLUMNS)
            .where(*where)
            .order_by(runs.c.created_at.desc(), runs.c.id.desc())
            .limit(limit)
            .offset((page - 1) * limit)
        )
        async with self.engine.connect() as connection:
            total = await connection.scalar(select(func.count()).select_from(runs).where(*where))
            rows = (await connection.execute(page_query)).all()
        return [_run(row) for row in rows], int(total or 0)

    async def count_running(self, app_id: str) -> int:
        """How many of the app's runs are running now (for a per-app concurrency limit)."""
        async with self.engine.connect() as connection:
            return await self._count_running(connection, app_id)

    @staticmethod
    async def _count_running(connection: AsyncConnection, app_id: str) -> int:
        statement = (
            select(func.count())
            .select_from(runs)
            .where(runs.c.app_id == app_id, runs.c.status == RUNNING)
        )
        return int(await connection.scalar(statement) or 0)

    async def overdue_runs(self, *, created_before: float, limit: int = 100) -> list[str]:
        """Ids of runs still running that were created before `created_before` (deadlines)."""
        statement = (
            select(runs.c.id)
            .where(
                runs.c.status == RUNNING,
                func.coalesce(runs.c.redriven_at, runs.c.created_at) < created_before,
            )
            .order_by(runs.c.created_at)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            return [row.id for row in (await connection.execute(statement)).all()]

    async def list_node_executions(self, run_id: str) -> list[NodeExecutionRecord]:
        """The run's node executions in the order they were first seen."""
        statement = (
            select(node_executions)
            .where(node_executions.c.run_id == run_id)
            .order_by(node_executions.c.created_at, node_executions.c.id)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        return [NodeExecutionRecord(**row._asdict()) for row in rows]

    # ---- outbox -----------------------------------------------------------------------

    async def add_outbox(
        self, messages: Sequence[OutboxMessage], *, run_id: str | None = None
    ) -> list[int]:
        """Queue messages outside any run transaction (e.g. a control message)."""
        async with write_transaction(self.engine) as connection:
            return await add_outbox(connection, run_id, messages)

    async def pending_outbox(
        self,
        *,
        limit: int = 100,
        run_id: str | None = None,
        ids: Sequence[int] | None = None,
        created_before: float | None = None,
    ) -> list[tuple[int, OutboxMessage]]:
        """Messages committed but not yet marked published, oldest first: all of them, a
        run's, the given `ids`, or those older than `created_before` (a recovery sweep).

        Two publishers may read the same rows; consumers dedupe by `message_id`.
        """
        statement = select(outbox).order_by(outbox.c.id).limit(limit)
        if run_id is not None:
            statement = statement.where(outbox.c.run_id == run_id)
        if ids is not None:
            statement = statement.where(outbox.c.id.in_(list(ids)))
        if created_before is not None:
            statement = statement.where(outbox.c.created_at < created_before)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        return [
            (
                row.id,
                OutboxMessage(
                    kind=row.kind,
                    routing=row.routing,
                    body=bytes(row.body),
                    message_id=row.message_id,
                    headers=row.headers,
                    delay_ms=row.delay_ms,
                ),
            )
            for row in rows
        ]

    async def mark_published(self, ids: Iterable[int]) -> None:
        """Forget published messages (rows are deleted: the outbox stays small)."""
        ids = list(ids)
        if not ids:
            return
        async with write_transaction(self.engine) as connection:
            for start in range(0, len(ids), _DELETE_CHUNK):
                chunk = ids[start : start + _DELETE_CHUNK]
                await connection.execute(delete(outbox).where(outbox.c.id.in_(chunk)))
