"""Fault-test fixtures: a private RabbitMQ node and a private PostgreSQL cluster for the
session (tests kill and restart them; the machine's shared services are never touched), a
TCP proxy for partitions, the mock LLM, and a mesh on them per test.

Run with `make faults` (not part of `make test`): the tests kill processes and take
minutes. The fault matrix (fault | runs | exact | stuck | recovery) is printed at the end.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Mocks
from tests.faults.matrix import MATRIX
from tests.faults.postgres import PrivatePostgres
from tests.faults.proxy import TcpProxy
from tests.faults.rabbit import PrivateRabbit
from tests.llm.conftest import MockLLM
from tests.mesh.cluster import Cluster


@pytest.fixture(scope="session")
def rabbit() -> Iterator[PrivateRabbit]:
    """The session's private RabbitMQ node, running (a test that kills it starts it again)."""
    node = PrivateRabbit(Path(tempfile.mkdtemp(prefix="fanflow-faults-rabbit-")))
    try:
        node.start()
        yield node
    finally:
        node.close()


@pytest.fixture
def broker(rabbit: PrivateRabbit) -> PrivateRabbit:
    """The private node, up at the start of the test (restarted if a test left it down)."""
    if not rabbit.alive:
        rabbit.start()
    return rabbit


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def postgres(pg_cluster: PrivatePostgres) -> PrivatePostgres:
    """The private PostgreSQL, up at the start of the test."""
    if not pg_cluster.running:
        pg_cluster.start()
    return pg_cluster


@pytest.fixture
def proxy() -> Iterator[Callable[[int], TcpProxy]]:
    """Factory: `proxy(upstream_port)` a partitionable TCP proxy; closed after the test."""
    proxies: list[TcpProxy] = []

    def make(upstream_port: int) -> TcpProxy:
        proxies.append(TcpProxy(upstream_port))
        return proxies[-1]

    yield make
    for made in proxies:
        made.close()


@pytest.fixture
def llm(tmp_path: Path) -> Iterator[MockLLM]:
    """The mock LLM in echo mode (the reply is the prompt), 200 ms per call, so a fault lands mid-run."""
    mocks = Mocks(tmp_path)
    mock = mocks.start("--mode", "echo", "--latency-ms", "200")
    yield mock
    mocks.stop(mock)


MakeMesh = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def mesh(
    tmp_path: Path, broker: PrivateRabbit, postgres: PrivatePostgres, llm: MockLLM
) -> AsyncIterator[MakeMesh]:
    """Factory: `await mesh(workers=2, aggregators=1, sqlite=False, **env)` a running
    cluster on the private broker and a fresh database of the private PostgreSQL (or a
    SQLite file), workers pointed at the mock LLM; torn down after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(
            *, workers: int = 2, aggregators: int = 1, sqlite: bool = False, **env: str
        ) -> Cluster:
            if sqlite:
                database_url = f"sqlite+aiosqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"
            else:
                database_url = await postgres.create_database()
            cluster = await Cluster.open(
                database_url=database_url,
                amqp_url=broker.url,
                log_dir=tmp_path / "logs",
                env={"FANFLOW_LLM_BASE_URL": llm.url, "FANFLOW_WORKER_PREFETCH": "8", **env},
            )
            stack.push_async_callback(cluster.close)
            for _ in range(workers):
                cluster.start_worker()
            for _ in range(aggregators):
                cluster.start_aggregator()
            await cluster.wait_ready()
            return cluster

        yield make


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MATRIX:
        terminalreporter.write_sep("=", "fault matrix")
        for line in MATRIX.table():
            terminalreporter.write_line(line)
