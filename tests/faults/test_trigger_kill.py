"""The trigger SIGKILLed under open clients: 3 runs started over HTTP (2 blocking, 1
streaming), the trigger killed while they wait. Each client had its run id from the
`X-Fanflow-Run-Id` header before any body; the runs go on without the trigger, and a new
trigger answers `GET /v1/workflows/run/{id}` with each run exact."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fanflow_services.trigger.resilient import RUN_ID_HEADER

from tests.faults.conftest import MakeMesh
from tests.faults.matrix import ITEMS, WORKLOAD, Workload, check_exact, expected_outputs
from tests.faults.ports import free_port
from tests.faults.rabbit import PrivateRabbit
from tests.mesh.cluster import Cluster

pytestmark = pytest.mark.timeout(240)

ADMIN = "faults-admin"


def start_trigger(cluster: Cluster, amqp_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANFLOW_")}
    env |= {
        "FANFLOW_DATABASE_URL": cluster.database_url,
        "FANFLOW_AMQP_URL": amqp_url,
        "FANFLOW_NAMESPACE": cluster.namespace,
        "FANFLOW_ADMIN_TOKEN": ADMIN,
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fanflow_services.cli", "trigger", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, log.read_text(errors="replace")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.1)


async def open_client(http: httpx.AsyncClient, key: str, mode: str, ids: asyncio.Queue[str]) -> str:
    """Start a run and wait on it; the run id goes to `ids` as soon as the headers came.
    Returns how the wait ended (the trigger dies under it)."""
    body = {"inputs": {"n": ITEMS}, "response_mode": mode, "user": "faults"}
    try:
        async with http.stream(
            "POST", "/v1/workflows/run", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            assert response.status_code == 200
            await ids.put(response.headers[RUN_ID_HEADER])
            await response.aread()
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return "answered"


async def test_trigger_sigkill_with_open_clients(
    tmp_path: Path, mesh: MakeMesh, broker: PrivateRabbit
) -> None:
    cluster = await mesh()
    port = free_port()
    log = tmp_path / "trigger.log"
    trigger = start_trigger(cluster, broker.url, port, log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            imported = await http.post(
                "/admin/apps",
                content=WORKLOAD.read_bytes(),
                headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "text/yaml"},
            )
            assert imported.status_code == 201, imported.text
            key, app_id = imported.json()["api_key"], imported.json()["app_id"]
            ids: asyncio.Queue[str] = asyncio.Queue()
            clients = [
                asyncio.create_task(open_client(http, key, mode, ids))
                for mode in ("blocking", "blocking", "streaming")
            ]
            run_ids = [await asyncio.wait_for(ids.get(), 30) for _ in clients]
            trigger.send_signal(signal.SIGKILL)
            trigger.wait(10)
            killed = time.monotonic()
            endings = await asyncio.gather(*clients)
        assert "answered" not in endings, endings  # the kill cut every wait short
        trigger = start_trigger(cluster, broker.url, port, log)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for run_id in run_ids:
                while True:
                    detail = await http.get(
                        f"/v1/workflows/run/{run_id}", headers={"Authorization": f"Bearer {key}"}
                    )
                    assert detail.status_code == 200, detail.text
                    if detail.json()["status"] != "running":
                        break
                    assert time.monotonic() - killed < 120
                    await asyncio.sleep(0.5)
                assert detail.json()["status"] == "succeeded"
                assert detail.json()["outputs"] == expected_outputs()
        took = time.monotonic() - killed
        app = await cluster.store.get_app(app_id)  # type: ignore[union-attr]
        assert app is not None
        await check_exact(
            Workload(cluster, app, run_ids),
            "trigger SIGKILL (2 blocking + 1 streaming clients open)",
            f"runs found by header id, ended {took:.1f} s after",
        )
    finally:
        if trigger.poll() is None:
            trigger.kill()
            trigger.wait(10)
