"""Alembic environment for fanflow's store.

Normally driven by `fanflow.store.migrate`, which hands over an open connection (inside
its transaction) through `config.attributes["connection"]`. Run through the `alembic`
command instead, it reads `sqlalchemy.url` (an async URL) and drives an async engine.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from fanflow.store._engine import make_engine
from fanflow.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things: later migrations copy-and-move tables
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "no database: set sqlalchemy.url (e.g. sqlite+aiosqlite:///fanflow.db) "
            "or call fanflow.store.migrate(url)"
        )
    return url


async def _run_async() -> None:
    engine = make_engine(_url(), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (given := config.attributes.get("connection")) is not None:
    _run(given)
else:
    asyncio.run(_run_async())
