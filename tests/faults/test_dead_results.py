"""dead.results is consumed: a result that ended up there (its deliveries spent, e.g. by a
database outage in an older aggregator) is applied once the store answers, even when it
arrives while the database is still away. The run then goes on and ends exact."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fanflow.mesh.amqp import Disposition
from fanflow.mesh.signing import ResultKey
from fanflow.messages import NodeTask
from tests.faults.conftest import MakeMesh
from tests.faults.matrix import ITEMS, check_exact, start_workload
from tests.faults.postgres import PrivatePostgres

pytestmark = pytest.mark.timeout(180)


async def test_a_dead_result_is_applied_once_the_database_is_back(
    mesh: MakeMesh, postgres: PrivatePostgres
) -> None:
    cluster = await mesh(workers=0)
    broker, topology = cluster.broker, cluster.topology
    assert broker is not None
    # no worker yet: the test takes the runs' first tasks (`make`) off the code queue
    taken: asyncio.Queue[NodeTask] = asyncio.Queue()

    async def take(body: bytes, headers: dict[str, Any], redelivered: bool) -> Disposition:
        await taken.put(NodeTask.decode(body))
        return Disposition.ACK

    consumer = await broker.consume(topology.task_queue("code"), take, prefetch=10)
    workload = await start_workload(cluster, runs=2)
    tasks = [await asyncio.wait_for(taken.get(), 30) for _ in workload.run_ids]
    await consumer.stop(timeout_s=5)
    assert {t.node_id for t in tasks} == {"make"}
    # their results go straight to dead.results, while the database is away
    await asyncio.to_thread(postgres.stop, "immediate")
    key = ResultKey(cluster.result_key)  # signed as the deployment's workers sign
    try:
        for task in tasks:
            result = task.result(status="succeeded", outputs={"items": list(range(ITEMS))})
            body = result.encode()
            await broker.publish_raw(
                "",
                topology.dead_results_queue,
                body,
                message_id=topology.result_message_id(task.task_id),
                headers=key.headers(body),
            )
        await asyncio.sleep(3)
    finally:
        await asyncio.to_thread(postgres.start)
    for _ in range(2):
        cluster.start_worker()
    await cluster.wait_ready()
    await check_exact(workload, "results dead-lettered during an outage", "- (applied after it)")
    assert await broker.message_count(topology.dead_results_queue) == 0
