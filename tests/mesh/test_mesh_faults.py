"""Delivery guarantees of the mesh under faults, end to end with real processes.

A 1,000-item parallel iteration (50 at a time, python3 body `x * x + 1`) must give the exact
list whatever happens: a worker SIGKILLed mid-run, every result delivered twice, the
aggregator SIGKILLed mid-run. A stopped run stops promptly and dispatches nothing after.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.mesh.cluster import Cluster
from tests.mesh.conftest import MakeCluster

pytestmark = pytest.mark.timeout(180)

DATA = Path(__file__).resolve().parents[1] / "data" / "mesh"
SQUARES = DATA / "squares.yml"
SLEEPY = DATA / "sleepy.yml"
ITEMS = 1000
EXPECTED = [x * x + 1 for x in range(ITEMS)]
#: start, make, each, end + (iteration-start, square) per item
EXPECTED_EXECUTIONS = 4 + 2 * ITEMS
RUN_TIMEOUT_S = 120


def finished_squares(cluster: Cluster, run_id: str) -> int:
    """Distinct item bodies whose node_finished event arrived (events may repeat)."""
    return len(
        {
            payload["data"]["scope"]
            for name, payload in cluster.events(run_id)
            if name == "node_finished" and payload["data"].get("node_id") == "square"
        }
    )


async def until_squares_finished(
    cluster: Cluster, run_id: str, count: int, *, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while finished_squares(cluster, run_id) < count:
        assert time.monotonic() < deadline, (
            f"only {finished_squares(cluster, run_id)} of {count} items done after {timeout_s} s"
            f"\n{cluster.logs()}"
        )
        await asyncio.sleep(0.05)


async def assert_exact_run(cluster: Cluster, run_id: str) -> None:
    run = await cluster.wait(run_id, timeout_s=RUN_TIMEOUT_S)
    assert run.status == "succeeded", (run.status, run.error, cluster.logs())
    assert run.outputs == {"results": EXPECTED}
    executions = await cluster.node_executions(run_id)
    assert len(executions) == EXPECTED_EXECUTIONS
    assert {e.status for e in executions} == {"succeeded"}


async def test_thousand_items_on_two_workers(make_cluster: MakeCluster) -> None:
    """The baseline, on PostgreSQL (the compose default), with two aggregators competing
    for the results (per-run serialization in the database); the faults run on SQLite (the
    worker kill on both)."""
    backend = "postgres"
    cluster = await make_cluster(backend, aggregators=2)
    app = await cluster.register(SQUARES)
    started = time.monotonic()
    run_id = await cluster.start_run(app, {"n": ITEMS})
    await assert_exact_run(cluster, run_id)
    print(f"\n{backend}: {ITEMS} items on 2 workers in {time.monotonic() - started:.1f} s")
    # neither worker crashed on the way
    for worker in (s for s in cluster.services if s.role == "worker"):
        assert worker.alive


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_worker_killed_mid_run(make_cluster: MakeCluster, backend: str) -> None:
    cluster = await make_cluster(backend)
    app = await cluster.register(SQUARES)
    run_id = await cluster.start_run(app, {"n": ITEMS}, record_events=True)
    await until_squares_finished(cluster, run_id, ITEMS * 3 // 10)
    victim = next(s for s in cluster.services if s.role == "worker")
    cluster.kill(victim)
    assert finished_squares(cluster, run_id) < ITEMS, "the run ended before the kill"
    replacement = cluster.start_worker()
    await cluster.wait_ready(replacement)
    await assert_exact_run(cluster, run_id)


async def test_every_result_delivered_twice(make_cluster: MakeCluster) -> None:
    cluster = await make_cluster("sqlite", worker_env={"FANFLOW_FAULT_DUPLICATE_RESULTS": "true"})
    app = await cluster.register(SQUARES)
    run_id = await cluster.start_run(app, {"n": ITEMS}, record_events=True)
    await assert_exact_run(cluster, run_id)
    executions = await cluster.node_executions(run_id)
    per_node = Counter((e.scope, e.node_id) for e in executions)
    assert set(per_node.values()) == {1}
    assert {e.attempts for e in executions} == {1}
    await asyncio.sleep(0.5)  # the last events are in flight
    finished = Counter(
        (payload["data"]["scope"], payload["data"]["node_id"])
        for name, payload in cluster.events(run_id)
        if name == "node_finished"
    )
    assert len(finished) == EXPECTED_EXECUTIONS
    assert {k: n for k, n in finished.items() if n != 1} == {}


async def until_naps_started(cluster: Cluster, run_id: str, count: int) -> None:
    def naps_started() -> int:
        return sum(
            1
            for name, payload in cluster.events(run_id)
            if name == "node_started" and payload["data"].get("node_id") == "nap"
        )

    deadline = time.monotonic() + 30
    while naps_started() < count:
        assert time.monotonic() < deadline, cluster.logs()
        await asyncio.sleep(0.05)


async def test_stop_ends_the_run_and_dispatches_nothing_after(make_cluster: MakeCluster) -> None:
    cluster = await make_cluster("sqlite")
    app = await cluster.register(SLEEPY)
    run_id = await cluster.start_run(app, {"n": 20}, record_events=True)
    await until_naps_started(cluster, run_id, 2)
    stopped_at = time.time()
    await cluster.stop_run(app, run_id)
    run = await cluster.wait(run_id, timeout_s=5)
    assert run.status == "stopped", (run.status, run.error)
    assert run.finished_at is not None and run.finished_at - stopped_at < 3
    await asyncio.sleep(3)
    executions = await cluster.node_executions(run_id)
    late = [(e.scope, e.node_id, e.started_at) for e in executions if e.started_at > stopped_at]
    assert late == []
    assert sum(1 for e in executions if e.node_id == "nap") <= 3
    # the nap in flight was cancelled on its worker through the control broadcast
    assert any("cancelled: run" in s.log() for s in cluster.services if s.role == "worker")
    assert (await cluster.wait(run_id)).status == "stopped"


async def test_stopped_run_leaves_no_node_execution_running(make_cluster: MakeCluster) -> None:
    """Dify fails the node executions still running when a run ends (stopped or failed),
    so its logs never show a node running in a finished run. fanflow leaves them
    `running` forever: the node cut off by the stop and its iteration."""
    cluster = await make_cluster("sqlite", workers=1)
    app = await cluster.register(SLEEPY)
    run_id = await cluster.start_run(app, {"n": 20}, record_events=True)
    await until_naps_started(cluster, run_id, 1)
    await cluster.stop_run(app, run_id)
    run = await cluster.wait(run_id, timeout_s=5)
    assert run.status == "stopped"
    executions = await cluster.node_executions(run_id)
    running = [(e.scope, e.node_id) for e in executions if e.status == "running"]
    assert running == [], f"node executions still running in a {run.status} run"


async def kill_between_commit_and_publish(cluster: Cluster, run_id: str) -> int:
    """SIGKILL the aggregator while the run has committed, unpublished outbox rows, and
    restart it; how many tries that took. A try misses when the rows got published
    between the look and the kill."""
    assert cluster.store is not None
    for attempt in range(1, 6):
        aggregator = next(s for s in cluster.services if s.role == "aggregator" and s.alive)
        deadline = time.monotonic() + 30
        while not await cluster.store.pending_outbox(limit=1, run_id=run_id):
            assert time.monotonic() < deadline, f"no outbox rows seen\n{cluster.logs()}"
            await asyncio.sleep(0.001)
        cluster.kill(aggregator)
        caught = bool(await cluster.store.pending_outbox(limit=1, run_id=run_id))
        await asyncio.sleep(0.5)  # workers keep publishing results meanwhile
        replacement = cluster.start_aggregator()
        await cluster.wait_ready(replacement)
        if caught:
            assert "outbox message(s) left by an earlier process" in replacement.log()
            return attempt
    raise AssertionError("never caught the aggregator between commit and publish in 5 tries")


async def test_aggregator_killed_mid_run(make_cluster: MakeCluster) -> None:
    cluster = await make_cluster("sqlite")
    app = await cluster.register(SQUARES)
    run_id = await cluster.start_run(app, {"n": ITEMS}, record_events=True)
    await until_squares_finished(cluster, run_id, ITEMS * 3 // 10)
    tries = await kill_between_commit_and_publish(cluster, run_id)
    assert finished_squares(cluster, run_id) < ITEMS, "the run ended before the kill"
    print(f"\ncaught the aggregator between commit and publish on try {tries}")
    await assert_exact_run(cluster, run_id)
