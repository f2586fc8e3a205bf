"""Mesh fixtures: a running cluster (workers + aggregator subprocesses) on a fresh namespace
and a fresh database, PostgreSQL or SQLite; everything is removed afterwards.

RabbitMQ and PostgreSQL must be running: a missing one fails the test with the command
that starts it (see tests/conftest.py), nothing skips.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AMQP_URL, fresh_postgres_database, require_service
from tests.mesh.cluster import Cluster

BACKENDS = ("postgres", "sqlite")


@contextlib.contextmanager
def fresh_database(backend: str, directory: Path) -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database; a PostgreSQL one is dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / f'mesh-{uuid.uuid4().hex[:8]}.db'}"
        return
    if backend != "postgres":
        raise ValueError(f"unknown backend {backend!r}: expected one of {BACKENDS}")
    with fresh_postgres_database() as url:
        yield url


@contextlib.asynccontextmanager
async def running_cluster(
    backend: str,
    directory: Path,
    *,
    workers: int = 2,
    aggregators: int = 1,
    worker_env: Mapping[str, str] | None = None,
    aggregator_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Cluster]:
    """`workers` workers and `aggregators` aggregators, ready to consume; torn down on exit."""
    require_service(AMQP_URL, "RabbitMQ")
    with fresh_database(backend, directory) as database_url:
        cluster = await Cluster.open(
            database_url=database_url, amqp_url=AMQP_URL, log_dir=directory / "logs"
        )
        try:
            for _ in range(workers):
                cluster.start_worker(**dict(worker_env or {}))
            for _ in range(aggregators):
                cluster.start_aggregator(**dict(aggregator_env or {}))
            await cluster.wait_ready()
            yield cluster
        finally:
            await cluster.close()


MakeCluster = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def make_cluster(tmp_path: Path) -> AsyncIterator[MakeCluster]:
    """Factory: `await make_cluster(backend, workers=2, worker_env=..., aggregator_env=...)`
    gives a running cluster; all of them are torn down after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(backend: str = "sqlite", **options: Any) -> Cluster:
            directory = tmp_path / f"{backend}-{uuid.uuid4().hex[:6]}"
            directory.mkdir()
            return await stack.enter_async_context(running_cluster(backend, directory, **options))

        yield make
