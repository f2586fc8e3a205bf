"""Engine construction and the per-backend details of beginning a transaction."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 30_000
_BEGIN_OPTION = "fanflow_sqlite_begin"


def _json_dumps(value: Any) -> str:
    # keep non-ASCII text searchable by `list_runs(keyword=...)`
    return json.dumps(value, ensure_ascii=False)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def make_engine(url: str, **options: Any) -> AsyncEngine:
    """An async engine for `sqlite+aiosqlite://` or `postgresql+asyncpg://` URLs."""
    backend = make_url(url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database URL {url!r}: expected sqlite or postgresql")
    if backend == "postgresql":
        # a pooled connection is tested before use: after a database restart the pool's
        # connections are dead, and each would otherwise fail its first caller
        options.setdefault("pool_pre_ping", True)
    engine = create_async_engine(url, json_serializer=_json_dumps, **options)
    if backend == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # take BEGIN away from the sqlite3 module (it never begins before a SELECT, so a
        # read-modify-write would not be isolated); `_begin` below emits it instead
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers never block the writer. synchronous stays FULL so a commit (after
        # which messages get published) survives power loss, not only a process crash.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        # SQLite's lower() folds ASCII only; ILIKE compiles to lower() LIKE lower(), so a
        # keyword search for "É" must see Python's Unicode-aware folding
        dbapi_connection.create_function("lower", 1, _lower, deterministic=True)

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that will write: on SQLite it takes the write lock up front.

    BEGIN IMMEDIATE waits (busy_timeout) for the one writer slot; a deferred transaction
    that read first would instead fail with "database is locked" when it tries to write.
    On PostgreSQL this is a plain transaction; callers lock rows they read-modify-write.
    """
    async with engine.connect() as connection:
        if is_sqlite(engine):
            await connection.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        async with connection.begin():
            yield connection


def insert_for(engine_or_connection: AsyncEngine | AsyncConnection) -> Any:
    """The dialect's `insert` (with ON CONFLICT support)."""
    name = engine_or_connection.dialect.name
    return postgresql.insert if name == "postgresql" else sqlite.insert
