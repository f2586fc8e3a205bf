"""Mesh vs embedded: the same iteration workflow, timed both ways in one run.

    .venv/bin/python benchmarks/mesh_vs_embedded.py [--items 200 1000] [--workers 1 2]

Baseline: `fanflow run`'s embedded runner in this process. Each mesh row starts an
aggregator and N workers (subprocesses, SQLite, a fresh namespace on the local RabbitMQ),
runs the workflow once to warm up, then times one run. Prints wall times and the ratio to
the baseline (below 1: the mesh is faster). Needs RabbitMQ at FANFLOW_AMQP_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fanflow.dsl.load import load_workflow
from fanflow.mesh.amqp import AmqpBroker
from fanflow.mesh.driver import RunDriver
from fanflow.mesh.relay import OutboxRelay
from fanflow.mesh.topology import Topology
from fanflow.runner import EmbeddedRunner
from fanflow.runtime import RunRequest
from fanflow.scheduler import Limits
from fanflow.store import Store

WORKFLOW = Path(__file__).resolve().parents[1] / "tests" / "data" / "mesh" / "squares.yml"
AMQP_URL = os.environ.get("FANFLOW_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def embedded(items: int) -> float:
    workflow = load_workflow(WORKFLOW)
    started = time.perf_counter()
    result = EmbeddedRunner().run(workflow, RunRequest(inputs={"n": items}))
    assert result.status == "succeeded", result.error
    return time.perf_counter() - started


async def mesh(items: int, workers: int, directory: Path) -> float:
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    database_url = f"sqlite+aiosqlite:///{directory / f'{namespace}.db'}"
    env = {
        **os.environ,
        "FANFLOW_DATABASE_URL": database_url,
        "FANFLOW_AMQP_URL": AMQP_URL,
        "FANFLOW_NAMESPACE": namespace,
        "FANFLOW_DRAIN_TIMEOUT_S": "5",
        "FANFLOW_RESULT_KEY": uuid.uuid4().hex,  # a fresh deployment key
    }
    store = await Store.open(database_url)
    topology = Topology(namespace=namespace)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "fanflow_services.cli", role],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for role in ["aggregator", *["worker"] * workers]
    ]
    try:
        async with AmqpBroker(AMQP_URL, topology=topology) as broker:
            await broker.declare()
            app_id = await store.create_app("bench", "workflow", WORKFLOW.read_text())
            app = await store.get_app(app_id)
            assert app is not None
            driver = RunDriver(store, topology, limits=Limits())
            relay = OutboxRelay(store, broker)

            async def run_once(n: int) -> float:
                run_id = str(uuid.uuid4())
                started = time.perf_counter()
                await relay.publish(
                    await driver.start_run(app, run_id, RunRequest(inputs={"n": n}))
                )
                while (run := await store.get_run(run_id)) is None or run.status == "running":
                    await asyncio.sleep(0.02)
                assert run.status == "succeeded", run.error
                return time.perf_counter() - started

            await run_once(min(items, 20))  # warm-up: processes ready, queues declared
            elapsed = await run_once(items)
            await broker.delete_topology()
            return elapsed
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"{'items':>6} {'setup':>12} {'seconds':>8} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as directory:
        for items in args.items:
            baseline = embedded(items)
            print(f"{items:>6} {'embedded':>12} {baseline:>8.2f} {1:>6.2f}")
            for workers in args.workers:
                seconds = asyncio.run(mesh(items, workers, Path(directory)))
                label = f"mesh {workers}w"
                print(f"{items:>6} {label:>12} {seconds:>8.2f} {seconds / baseline:>6.2f}")


if __name__ == "__main__":
    main()
