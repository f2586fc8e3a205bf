"""The forged-result attack against real RabbitMQ and real services: an aggregator
subprocess with its deployment's key, a result forged for a run (unsigned, and signed with
another key) published straight to the results queue with the genuine message id. It is
dropped and counted (the aggregator's /metrics), the run keeps waiting, and the worker's
genuine result then completes it with the genuine outputs. A worker or an aggregator with
no key refuses to start.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from fanflow.mesh.signing import ResultKey
from fanflow.mesh.transport import Disposition
from fanflow.messages import TaskResult, task_id_for
from tests.mesh.conftest import MakeCluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CODE_NODE = "1700000000003"  # hello.yml's code node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rejected(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.findall(
        r'^fanflow_results_rejected_total\{queue="results",reason="(\w+)"\} (\S+)$', text, re.M
    )
    return {reason: float(value) for reason, value in found}


async def test_a_forged_result_for_a_run_is_rejected_and_the_genuine_one_completes_it(
    make_cluster: MakeCluster,
) -> None:
    metrics = free_port()
    cluster = await make_cluster(
        "sqlite", workers=0, aggregator_env={"FANFLOW_METRICS_PORT": str(metrics)}
    )
    app = await cluster.register(EXAMPLES / "hello.yml")
    run_id = await cluster.start_run(app, {"name": "victim"})
    task_id = task_id_for(run_id, CODE_NODE, "", 0)  # deterministic: an attacker can compute it
    forged = TaskResult(
        task_id=task_id,
        run_id=run_id,
        node_id=CODE_NODE,
        status="succeeded",
        outputs={"shout": "PWNED", "length": -1},
    )
    broker, topology = cluster.broker, cluster.topology
    assert broker is not None
    route = topology.result_route()
    body = forged.encode()
    message_id = topology.result_message_id(task_id)
    await broker.publish_raw(route.exchange, route.routing_key, body, message_id=message_id,
                             headers=topology.result_headers(forged))  # fmt: skip
    other = ResultKey("a key of some other deployment")
    await broker.publish_raw(route.exchange, route.routing_key, body, message_id=message_id,
                             headers={**topology.result_headers(forged), **other.headers(body)})  # fmt: skip
    async with asyncio.timeout(20):
        while rejected(metrics) != {"missing": 1.0, "bad": 1.0}:
            await asyncio.sleep(0.1)
    run = await cluster._require(cluster.store).get_run(run_id)
    assert run is not None and run.status == "running"
    assert "dropping result" in cluster.logs()
    # the genuine worker arrives; its result is not a duplicate of anything
    worker = cluster.start_worker()
    await cluster.wait_ready(worker)
    run = await cluster.wait(run_id)
    assert run.status == "succeeded", run.error
    assert run.outputs == {"greeting": "Hello, victim!", "shout": "HELLO, VICTIM!", "length": 14}
    assert rejected(metrics) == {"missing": 1.0, "bad": 1.0}


def test_services_refuse_to_start_without_a_key(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "FANFLOW_AMQP_URL": "amqp://nobody@127.0.0.1:1/"}
    for role in ("worker", "aggregator"):
        done = subprocess.run(
            [sys.executable, "-m", "fanflow_services.cli", role],
            env=env,
            capture_output=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert done.returncode != 0
        assert b"FANFLOW_RESULT_KEY" in done.stderr, done.stderr[-2000:]


async def test_a_code_node_returning_an_unencodable_string_fails_at_once(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    source = (EXAMPLES / "hello.yml").read_text()
    assert source.count("greeting.upper()") == 1
    poison = tmp_path / "poison.yml"
    poison.write_text(source.replace("greeting.upper()", "chr(0xD800)"))  # a lone surrogate
    cluster = await make_cluster("sqlite", workers=1)
    app = await cluster.register(poison)
    run_id = await cluster.start_run(app, {"name": "x"})
    run = await cluster.wait(run_id)
    assert run.status == "failed"
    assert "cannot be sent" in (run.error or "") and CODE_NODE in (run.error or ""), run.error
    # executed once: no redelivery ran the user code again
    assert cluster.logs().count("its result cannot be encoded") == 1


async def test_a_task_dead_lettered_by_the_broker_states_its_true_delivery_count(
    make_cluster: MakeCluster,
) -> None:
    cluster = await make_cluster("sqlite", workers=0)
    broker, topology = cluster.broker, cluster.topology
    assert broker is not None
    deliveries = 0

    async def crash(body: bytes, headers: dict[str, object], redelivered: bool) -> Disposition:
        nonlocal deliveries
        deliveries += 1
        return Disposition.REQUEUE  # as a worker dying mid-task leaves it

    await broker.consume(topology.task_queue("code"), crash, prefetch=1)
    app = await cluster.register(EXAMPLES / "hello.yml")
    run = await cluster.wait(await cluster.start_run(app, {"name": "x"}))
    assert run.status == "failed"
    assert deliveries == topology.delivery_limit + 1
    assert f"after {deliveries} deliveries" in (run.error or ""), run.error
