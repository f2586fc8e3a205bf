"""`fanflow trigger` and `fanflow apps import` as real processes: start, import, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fanflow.settings import Settings
from tests.trigger.conftest import ADMIN_TOKEN, HELLO, delete_topology, settings_for

CLI = [sys.executable, "-m", "fanflow_services.cli"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANFLOW_")}
    env.update(
        FANFLOW_DATABASE_URL=settings.database_url,
        FANFLOW_AMQP_URL=settings.amqp_url,
        FANFLOW_NAMESPACE=settings.namespace,
        FANFLOW_ADMIN_TOKEN=ADMIN_TOKEN,
        FANFLOW_DRAIN_TIMEOUT_S="5",
    )
    return env


@pytest.fixture
def trigger_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """A `fanflow trigger` process, ready (its /healthz answers); killed if still alive."""
    settings = settings_for(tmp_path)
    port = _free_port()
    log = tmp_path / "trigger.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*CLI, "trigger", "--port", str(port)],
            env=_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield process, url, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        # the process declared the namespace; remove it
        asyncio.run(delete_topology(settings))


def test_cli_import_and_graceful_sigterm(
    trigger_process: tuple[subprocess.Popen[bytes], str, Path],
) -> None:
    process, url, log = trigger_process
    imported = subprocess.run(
        [*CLI, "apps", "import", str(HELLO), "--url", url],
        env={**os.environ, "FANFLOW_ADMIN_TOKEN": ADMIN_TOKEN},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    key = json.loads(imported.stdout)["api_key"]

    body = {"inputs": {"name": "x"}, "response_mode": "streaming", "user": "u"}
    headers = {"Authorization": f"Bearer {key}"}
    events = []
    with httpx.stream("POST", f"{url}/v1/workflows/run", json=body, headers=headers) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(json.loads(line[len("data: ") :]))
            if events[-1]["event"] == "node_started" and events[-1]["data"]["node_type"] == "code":
                # no worker runs the code node: the stream would wait; the signal ends it
                process.send_signal(signal.SIGTERM)
    assert events[-1]["event"] == "error" and events[-1]["status"] == 503, events[-1]
    # uvicorn re-raises the signal once shut down, so the exit status still says SIGTERM
    assert process.wait(15) in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()


def test_cli_import_reports_refusals(
    trigger_process: tuple[subprocess.Popen[bytes], str, Path],
) -> None:
    _, url, _ = trigger_process
    refused = subprocess.run(
        [*CLI, "apps", "import", str(HELLO), "--url", url, "--admin-token", "wrong"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode != 0
    assert "401" in refused.stderr and "admin token" in refused.stderr


def test_trigger_without_a_broker_exits_saying_why(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, amqp_url=f"amqp://guest:guest@127.0.0.1:{_free_port()}/")
    done = subprocess.run(
        [*CLI, "trigger", "--port", str(_free_port())],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "cannot connect to RabbitMQ" in done.stdout + done.stderr
