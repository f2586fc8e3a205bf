"""Process faults under 3 concurrent runs: a worker SIGKILLed, the aggregator SIGKILLed, a
worker hung (SIGSTOP) and a worker cut off by a network partition. The last two keep
their TCP connections open, so only heartbeats tell the broker: their prefetched tasks
must come back (and the runs end) within 30 s.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from tests.faults.conftest import MakeMesh
from tests.faults.matrix import check_exact, start_workload
from tests.faults.proxy import TcpProxy
from tests.faults.rabbit import PrivateRabbit

pytestmark = pytest.mark.timeout(300)

#: a hung or partitioned worker's tasks are back in their queues within this
LIVENESS_BOUND_S = 30.0
#: the LLM iteration is under way: workers hold prefetched LLM tasks
DURING_LLM = 0.6


async def test_worker_sigkill(mesh: MakeMesh) -> None:
    cluster = await mesh()
    workload = await start_workload(cluster)
    await workload.until_progress(0.3)
    victim = next(s for s in cluster.services if s.role == "worker")
    killed = time.monotonic()
    cluster.kill(victim)
    replacement = cluster.start_worker()
    await cluster.wait_ready(replacement)
    await workload.wait_finished()
    took = time.monotonic() - killed
    await check_exact(workload, "worker SIGKILL (+ replacement)", f"runs ended {took:.1f} s after")


async def test_aggregator_sigkill(mesh: MakeMesh) -> None:
    cluster = await mesh()
    workload = await start_workload(cluster)
    done = await workload.until_progress(0.3)
    victim = next(s for s in cluster.services if s.role == "aggregator")
    cluster.kill(victim)
    await asyncio.sleep(1)
    replacement = cluster.start_aggregator()
    restarted = time.monotonic()
    await cluster.wait_ready(replacement)
    now = await workload.progress()
    assert now is not None
    resumed = await workload.until_more_than(max(done, now), timeout_s=60)
    took = time.monotonic() - restarted
    await check_exact(
        workload, "aggregator SIGKILL (restart after 1 s)", f"{took:.1f} s after restart"
    )
    assert resumed < 15


async def test_worker_kill_storm(mesh: MakeMesh) -> None:
    """A worker SIGKILLed every second, four times, each replaced at once."""
    cluster = await mesh()
    workload = await start_workload(cluster)
    await workload.until_progress(0.2)
    started = time.monotonic()
    for _ in range(4):
        victim = next(s for s in cluster.services if s.role == "worker" and s.alive)
        cluster.kill(victim)
        cluster.start_worker()
        await asyncio.sleep(1)
    await workload.wait_finished()
    took = time.monotonic() - started
    await check_exact(
        workload,
        "worker kill storm (4 kills, 1 s apart)",
        f"runs ended {took:.1f} s after the first",
    )


async def test_two_aggregators_one_killed(mesh: MakeMesh) -> None:
    cluster = await mesh(aggregators=2)
    workload = await start_workload(cluster)
    await workload.until_progress(0.3)
    victim = next(s for s in cluster.services if s.role == "aggregator")
    killed = time.monotonic()
    cluster.kill(victim)
    await workload.wait_finished()
    took = time.monotonic() - killed
    await check_exact(workload, "two aggregators, one SIGKILLed", f"runs ended {took:.1f} s after")


async def test_hung_worker_sigstop(mesh: MakeMesh) -> None:
    cluster = await mesh()
    workload = await start_workload(cluster)
    await workload.until_progress(DURING_LLM)
    victim = next(s for s in cluster.services if s.role == "worker")
    victim.process.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        await workload.wait_finished(timeout_s=90)
        took = time.monotonic() - stopped
    finally:
        victim.process.send_signal(signal.SIGCONT)
    await check_exact(workload, "worker hung (SIGSTOP)", f"runs ended {took:.1f} s after")
    assert took <= LIVENESS_BOUND_S + 5


async def test_partitioned_worker(
    mesh: MakeMesh, broker: PrivateRabbit, proxy: Callable[[int], TcpProxy]
) -> None:
    cluster = await mesh(workers=1)
    through = proxy(broker.port)
    parts = urlsplit(broker.url)
    behind = cluster.start_worker(
        FANFLOW_AMQP_URL=parts._replace(netloc=f"guest:guest@127.0.0.1:{through.port}").geturl()
    )
    await cluster.wait_ready(behind)
    workload = await start_workload(cluster)
    await workload.until_progress(DURING_LLM)
    through.partition()
    cut = time.monotonic()
    try:
        await workload.wait_finished(timeout_s=90)
        took = time.monotonic() - cut
    finally:
        through.heal()
    await check_exact(workload, "worker partitioned (TCP proxy)", f"runs ended {took:.1f} s after")
    assert took <= LIVENESS_BOUND_S + 5
