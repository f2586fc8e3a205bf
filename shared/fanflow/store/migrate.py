"""Schema migrations, run programmatically (no alembic.ini): `await migrate(url)`.

The Alembic scripts ship inside the package (`fanflow/store/migrations`), so this works
from an installed wheel as well as from a checkout.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from fanflow.store._engine import make_engine, write_transaction

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# any constant will do: it only keeps two processes from migrating the same database at once
_PG_MIGRATION_LOCK = 0x66616E66


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged scripts; `connection` is used by env.py."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
    command.upgrade(alembic_config(connection), revision)


async def upgrade(engine: AsyncEngine, *, revision: str = "head") -> None:
    """Migrate the database behind `engine` to `revision`, in one transaction.

    Concurrent callers are safe: SQLite serializes them with BEGIN IMMEDIATE, PostgreSQL
    with an advisory lock; the later caller finds nothing left to do.
    """
    async with write_transaction(engine) as connection:
        await connection.run_sync(_upgrade, revision)


async def migrate(url: str, *, revision: str = "head") -> None:
    """Migrate the database at `url` (an async SQLAlchemy URL) to `revision`."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        await upgrade(engine, revision=revision)
    finally:
        await engine.dispose()
