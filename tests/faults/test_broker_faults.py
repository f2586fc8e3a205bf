"""The broker `kill -9`ed under 3 concurrent runs and started again: durable quorum queues
keep every task and result; clients reconnect; every run ends exact."""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.conftest import MakeMesh
from tests.faults.matrix import check_exact, start_workload
from tests.faults.rabbit import PrivateRabbit

pytestmark = pytest.mark.timeout(300)


async def test_broker_kill_9(mesh: MakeMesh, broker: PrivateRabbit) -> None:
    cluster = await mesh()
    workload = await start_workload(cluster)
    await workload.until_progress(0.3)
    await asyncio.to_thread(broker.kill)
    await asyncio.sleep(1)
    # settled: with the broker gone nothing more can be applied
    done = await workload.progress()
    assert done is not None
    boot = await asyncio.to_thread(broker.start)
    resumed = await workload.until_more_than(done, timeout_s=90)
    await check_exact(
        workload,
        "broker kill -9 (restart after 1 s)",
        f"{resumed:.1f} s after it is back (boot {boot:.1f} s)",
    )
    for service in cluster.services:
        assert service.alive, service.tail()


async def test_broker_down_60_s(mesh: MakeMesh, broker: PrivateRabbit) -> None:
    cluster = await mesh()
    workload = await start_workload(cluster)
    await workload.until_progress(0.3)
    await asyncio.to_thread(broker.stop)  # a clean shutdown: clients see the close
    await asyncio.sleep(1)
    done = await workload.progress()
    assert done is not None
    await asyncio.sleep(59)
    await asyncio.to_thread(broker.start)
    resumed = await workload.until_more_than(done, timeout_s=90)
    await check_exact(workload, "broker down 60 s", f"{resumed:.1f} s after it is back")
    for service in cluster.services:
        assert service.alive, service.tail()
