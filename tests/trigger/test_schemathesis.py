"""Schemathesis over the trigger's own /openapi.json, against a real trigger process on
PostgreSQL (the stricter database: it refuses NUL in text): no generated request, valid or
not, may get a 5xx.

Two passes, each with the credentials its routes need: the Service API and the operations
endpoints with an app key, the admin API with the admin token. No worker runs: a run that
starts answers after the short blocking timeout with status `running`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fanflow.mesh.amqp import AmqpBroker
from fanflow.mesh.topology import Topology
from tests.conftest import AMQP_URL, fresh_postgres_database, require_service
from tests.trigger.conftest import ADMIN_TOKEN, HELLO

SCHEMATHESIS = Path(sys.executable).with_name("st")
#: per operation and pass; with both passes the test takes ~15 s here
MAX_EXAMPLES = 100


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def trigger_url(tmp_path: Path) -> Iterator[str]:
    require_service(AMQP_URL, "RabbitMQ")
    namespace = f"fanflow-st-{uuid.uuid4().hex[:10]}"
    port = _free_port()
    with fresh_postgres_database() as database_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FANFLOW_")},
            "FANFLOW_DATABASE_URL": database_url,
            "FANFLOW_AMQP_URL": AMQP_URL,
            "FANFLOW_NAMESPACE": namespace,
            "FANFLOW_ADMIN_TOKEN": ADMIN_TOKEN,
            "FANFLOW_BLOCKING_TIMEOUT_S": "0.2",
        }
        log = (tmp_path / "trigger.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "fanflow_services.cli", "trigger", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, (tmp_path / "trigger.log").read_text()
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the trigger did not become healthy"
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
            _delete_topology(namespace)
            errors = [
                line
                for line in (tmp_path / "trigger.log").read_text().splitlines()
                if "Traceback" in line or " failed" in line
            ]
            print("\n".join(errors[:20]))


def _delete_topology(namespace: str) -> None:
    import asyncio

    async def delete() -> None:
        broker = AmqpBroker(AMQP_URL, topology=Topology(namespace=namespace))
        await broker.connect()
        try:
            await broker.delete_topology()
        finally:
            await broker.close()

    asyncio.run(delete())


def _schemathesis(
    url: str, token: str, *paths: str, report: Path
) -> subprocess.CompletedProcess[str]:
    include = "|".join(paths)
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance",
        "--include-path-regex",
        f"^({include})",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "20261203",
        "--request-timeout",
        "10",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    # its working directory gets a `.schemathesis` cache: keep it out of the checkout
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, cwd=report.parent
    )


def test_no_generated_request_gets_a_5xx(trigger_url: str, tmp_path: Path) -> None:
    assert SCHEMATHESIS.exists(), f"{SCHEMATHESIS} missing: `make install` installs the dev extras"
    imported = httpx.post(
        f"{trigger_url}/admin/apps",
        content=HELLO.read_bytes(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "text/yaml"},
    )
    assert imported.status_code == 201, imported.text
    key = imported.json()["api_key"]
    for token, paths, name in (
        (key, ("/v1/", "/healthz", "/metrics"), "service"),
        (ADMIN_TOKEN, ("/admin/",), "admin"),
    ):
        report = tmp_path / f"{name}.xml"
        done = _schemathesis(trigger_url, token, *paths, report=report)
        summary = done.stdout[-6000:]
        assert done.returncode == 0, (
            f"schemathesis ({name}) found failures:\n{summary}\n{done.stderr[-2000:]}"
        )
        assert " passed" in done.stdout and "generated" in done.stdout, summary
        assert report.exists() and 'failures="0"' in report.read_text(), report.read_text()[:2000]
        print(summary)
