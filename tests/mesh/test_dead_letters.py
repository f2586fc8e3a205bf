"""A task the broker dead-letters fails its node, so the run ends instead of hanging."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fanflow.mesh.amqp import Disposition
from fanflow.messages import NodeTask
from tests.mesh.conftest import MakeCluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def test_a_rejected_task_fails_its_node_and_the_run(make_cluster: MakeCluster) -> None:
    # no worker: the run's code task waits in its queue until this test rejects it
    cluster = await make_cluster("sqlite", workers=0)
    app = await cluster.register(EXAMPLES / "hello.yml")
    run_id = await cluster.start_run(app, {"name": "poison"})

    rejected: list[NodeTask] = []

    async def reject(body: bytes, headers: dict, redelivered: bool) -> Disposition:
        rejected.append(NodeTask.decode(body))
        return Disposition.REJECT  # what a worker's consumer loop does with a poison task

    broker = cluster.broker
    assert broker is not None
    consumer = await broker.consume(broker.topology.task_queue("code"), reject, prefetch=1)
    try:
        run = await cluster.wait(run_id, timeout_s=30)
    finally:
        await consumer.stop(timeout_s=5)
        await asyncio.sleep(0)
    assert [task.run_id for task in rejected] == [run_id]
    assert run.status == "failed"
    assert "dead-lettered" in (run.error or "")
    failed = [e for e in await cluster.node_executions(run_id) if e.status == "failed"]
    assert [e.node_id for e in failed] == [rejected[0].node_id]
