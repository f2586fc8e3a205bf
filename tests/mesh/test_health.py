"""Worker and aggregator health: a heartbeat that says "doing the work", read by
`fanflow health` (the compose healthcheck)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.mesh.conftest import MakeCluster


def health(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fanflow_services.cli", "health", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def wait_healthy(path: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        done = health(path)
        if done.returncode == 0 or time.monotonic() > deadline:
            return done
        await asyncio.sleep(0.5)


async def test_worker_and_aggregator_are_healthy_while_running_then_not(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    worker_file, aggregator_file = tmp_path / "worker.json", tmp_path / "aggregator.json"
    cluster = await make_cluster(
        "sqlite",
        workers=1,
        worker_env={"FANFLOW_HEALTH_FILE": str(worker_file)},
        aggregator_env={"FANFLOW_HEALTH_FILE": str(aggregator_file)},
    )
    done = await wait_healthy(worker_file)
    assert done.returncode == 0, (done.stderr, cluster.logs())
    assert "worker: healthy" in done.stdout
    done = await wait_healthy(aggregator_file)
    assert done.returncode == 0, (done.stderr, cluster.logs())
    assert "aggregator: healthy" in done.stdout
    for service in cluster.services:
        service.process.send_signal(signal.SIGTERM)
    for service in cluster.services:
        await asyncio.to_thread(service.process.wait, 60)
    for path in (worker_file, aggregator_file):
        done = health(path)
        assert done.returncode == 1
        assert "not running" in done.stderr
