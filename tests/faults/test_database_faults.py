"""PostgreSQL faults under 3 concurrent runs: an immediate restart (a crash: connections
cut, no checkpoint) and a 30 s outage. Every run must end exact, and progress must resume
within 10 s of the database's return.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.conftest import MakeMesh
from tests.faults.matrix import check_exact, start_workload
from tests.faults.postgres import PrivatePostgres

pytestmark = pytest.mark.timeout(300)

#: progress after the database is back, at the latest
RECOVERY_BOUND_S = 10.0


async def test_postgres_immediate_restart(mesh: MakeMesh, postgres: PrivatePostgres) -> None:
    cluster = await mesh()
    workload = await start_workload(cluster)
    await workload.until_progress(0.3)
    # a crash and the restart a supervisor does a second later
    await asyncio.to_thread(postgres.stop, "immediate")
    await asyncio.sleep(1)
    await asyncio.to_thread(postgres.start)
    resumed = await workload.resumed_after(time.monotonic())
    await check_exact(
        workload, "PostgreSQL -m immediate restart (1 s down)", f"{resumed:.1f} s after it is back"
    )
    assert resumed <= RECOVERY_BOUND_S


async def test_postgres_down_30_s(mesh: MakeMesh, postgres: PrivatePostgres) -> None:
    cluster = await mesh()
    workload = await start_workload(cluster)
    await workload.until_progress(0.3)
    await asyncio.to_thread(postgres.stop, "immediate")
    try:
        await asyncio.sleep(30)
    finally:
        await asyncio.to_thread(postgres.start)
    resumed = await workload.resumed_after(time.monotonic())
    await check_exact(workload, "PostgreSQL down 30 s", f"{resumed:.1f} s after it is back")
    assert resumed <= RECOVERY_BOUND_S
    # the aggregator held the messages (no delivery spent): nothing was dead-lettered
    for service in cluster.services:
        if service.role == "aggregator":
            assert "dead-lettered" not in service.log()
