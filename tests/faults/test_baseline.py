"""The workload without a fault, and the fixtures themselves: the private services restart
with their data, the proxy partitions and heals."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import MakeMesh
from tests.faults.matrix import check_exact, start_workload
from tests.faults.postgres import PrivatePostgres, wait_until_up
from tests.faults.proxy import TcpProxy
from tests.faults.rabbit import PrivateRabbit

pytestmark = pytest.mark.timeout(240)


async def test_no_fault(mesh: MakeMesh) -> None:
    cluster = await mesh()
    workload = await start_workload(cluster)
    await workload.wait_finished()
    took = time.monotonic() - workload.started_at
    await check_exact(workload, "none (baseline)", f"- (3 runs took {took:.1f} s)")


async def test_private_postgres_keeps_its_data_through_an_immediate_restart(
    postgres: PrivatePostgres,
) -> None:
    await postgres.execute("CREATE TABLE IF NOT EXISTS kept (x int); INSERT INTO kept VALUES (7)")
    postgres.restart("immediate")
    await wait_until_up(postgres)
    import asyncpg

    connection = await asyncpg.connect(postgres.admin_url())
    try:
        assert 7 in [r["x"] for r in await connection.fetch("SELECT x FROM kept")]
    finally:
        await connection.close()


def test_private_rabbit_comes_back_after_kill_9(broker: PrivateRabbit) -> None:
    broker.kill()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", broker.port), timeout=1).close()
    assert broker.start() < 60
    socket.create_connection(("127.0.0.1", broker.port), timeout=1).close()


async def test_proxy_partition_holds_traffic_until_healed(
    proxy: Callable[[int], TcpProxy],
) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    through = proxy(port)
    reader, writer = await asyncio.open_connection("127.0.0.1", through.port)
    writer.write(b"one")
    assert await asyncio.wait_for(reader.read(100), 5) == b"one"
    through.partition()
    writer.write(b"two")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(100), 1)
    through.heal()
    assert await asyncio.wait_for(reader.read(100), 5) == b"two"
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
