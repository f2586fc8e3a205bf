"""Bad messages under 3 concurrent runs: a committed outbox row no queue routes (a task
for a class nothing serves) and poison tasks and results. None may stop the aggregator or
touch the other runs; the unroutable task fails its node (and so its run) with a clear
error; the dead-letter queues are consumed, not left to fill.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from fanflow.mesh.driver import RunDriver
from fanflow.mesh.topology import DEFAULT_NODE_CLASSES, Topology
from fanflow.runtime import RunRequest
from fanflow.scheduler import Limits
from tests.e2e.conftest import free_port, scrape, total
from tests.faults.conftest import MakeMesh
from tests.faults.matrix import WORKLOAD, check_exact, start_workload

pytestmark = pytest.mark.timeout(240)


async def test_unroutable_outbox_row(mesh: MakeMesh) -> None:
    cluster = await mesh(aggregators=0)
    assert cluster.store is not None
    app = await cluster.register(WORKLOAD)
    # a driver that routes code nodes to a class no queue serves commits the victim's
    # first task; nobody publishes it: the aggregator's startup sweep finds it
    gpu = Topology(
        namespace=cluster.namespace, node_classes={**DEFAULT_NODE_CLASSES, "code": "gpu"}
    )
    victim = str(uuid.uuid4())
    await RunDriver(cluster.store, gpu, limits=Limits()).start_run(
        app, victim, RunRequest(inputs={"n": 3})
    )
    workload = await start_workload(cluster)
    port = free_port()
    aggregator = cluster.start_aggregator(FANFLOW_METRICS_PORT=str(port))
    started = time.monotonic()
    await cluster.wait_ready(aggregator)
    run = await cluster.wait(victim, timeout_s=30)
    took = time.monotonic() - started
    await check_exact(
        workload, "unroutable outbox row (+ 3 good runs)", f"victim failed {took:.1f} s after start"
    )
    assert run.status == "failed"
    assert run.error is not None and "make" in run.error and "gpu" in run.error, run.error
    assert aggregator.alive, aggregator.tail()
    assert await cluster.store.pending_outbox(run_id=victim) == []
    assert total(scrape(port), "fanflow_outbox_parked_total", kind="task") == 1


async def test_poison_tasks_and_results(mesh: MakeMesh) -> None:
    cluster = await mesh()
    broker, topology = cluster.broker, cluster.topology
    assert broker is not None
    workload = await start_workload(cluster)
    await workload.until_progress(0.2)
    poison = [
        (topology.tasks_exchange, "code", b"not json at all"),
        (topology.tasks_exchange, "llm", b'{"task_id": 7}'),
        ("", topology.results_queue, b"{broken"),
        ("", topology.results_queue, b'{"run_id": "nobody"}'),
    ]
    for exchange, key, body in poison:
        await broker.publish_raw(exchange, key, body, message_id=f"poison-{uuid.uuid4().hex[:6]}")
    await check_exact(workload, "poison tasks and results (4)", "- (no stall)")
    for service in cluster.services:
        assert service.alive, service.tail()
    # dead letters are consumed, not left in their queues
    deadline = time.monotonic() + 20
    while True:
        left = {
            name: await broker.message_count(name)
            for name in (topology.dead_tasks_queue, topology.dead_results_queue)
        }
        if not any(left.values()):
            break
        assert time.monotonic() < deadline, f"dead letters left: {left}\n{cluster.logs()}"
        await asyncio.sleep(0.5)
