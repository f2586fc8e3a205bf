"""`fanflow dev` for a benchmark: a fresh PostgreSQL database and namespace, cleaned up after.

    with DevMesh(workers=2, env={"FANFLOW_LLM_BASE_URL": url}, log=path) as mesh:
        key = mesh.import_app(yaml_text)
        seconds, data = mesh.run(key, inputs)

The database (`fanflow_bench_<random>`) is created on the local PostgreSQL and dropped
with FORCE at exit; the namespace's queues and exchanges are deleted; `fanflow dev` is
stopped with SIGTERM (SIGKILL to its process group after the drain timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from benchmarks.common import FANFLOW, base_env

POSTGRES_ADMIN_URL = os.environ.get(
    "FANFLOW_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
AMQP_URL = os.environ.get("FANFLOW_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
READY_TIMEOUT_S = 120.0
_PID = re.compile(rb"\[dev\] started (\S+) \(pid (\d+)\)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _postgres_admin(sql: str) -> None:
    import asyncpg

    async def execute() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(execute())


def delete_namespace(namespace: str) -> None:
    """Delete a namespace's queues and exchanges (fanflow's own teardown)."""
    from fanflow.mesh.amqp import AmqpBroker
    from fanflow.mesh.topology import Topology

    async def delete() -> None:
        async with AmqpBroker(AMQP_URL, topology=Topology(namespace=namespace)) as broker:
            await broker.delete_topology()

    asyncio.run(delete())


class DevMesh:
    """`fanflow dev --workers N` on its own database and namespace."""

    def __init__(self, *, workers: int, env: dict[str, str], log: Path) -> None:
        self.workers = workers
        self.log = log
        self.namespace = f"bench-{uuid.uuid4().hex[:10]}"
        self.database = f"fanflow_bench_{uuid.uuid4().hex[:10]}"
        self.port = _free_port()
        self.admin_token = secrets.token_hex(8)
        parts = urlsplit(POSTGRES_ADMIN_URL)
        database_url = urlunsplit(
            parts._replace(scheme="postgresql+asyncpg", path=f"/{self.database}")
        )
        self.env = base_env(
            FANFLOW_DATABASE_URL=database_url,
            FANFLOW_AMQP_URL=AMQP_URL,
            FANFLOW_NAMESPACE=self.namespace,
            FANFLOW_ADMIN_TOKEN=self.admin_token,
            FANFLOW_DRAIN_TIMEOUT_S="5",
            # the default (10,000 node runs) stops a 10,000-item iteration
            FANFLOW_MAX_STEPS="10000000",
        )
        self.env.update(env)
        self.process: subprocess.Popen[bytes] | None = None
        self.pids: dict[str, int] = {}
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=1300)
        self._created_db = False

    def __enter__(self) -> DevMesh:
        try:
            _postgres_admin(f'CREATE DATABASE "{self.database}"')
            self._created_db = True
            with self.log.open("ab") as out:
                self.process = subprocess.Popen(
                    [*FANFLOW, "dev", "--port", str(self.port), "--workers", str(self.workers)],
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            text = self.log.read_bytes()
            if b"[dev] ready:" in text:
                self.pids = {m[0].decode(): int(m[1]) for m in _PID.findall(text)}
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"fanflow dev exited {self.process.returncode}: see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"fanflow dev not ready in {READY_TIMEOUT_S:g} s: see {self.log}"
                )
            time.sleep(0.1)

    def import_app(self, dsl: str) -> str:
        """Register a workflow; its API key."""
        response = self.client.post(
            "/admin/apps",
            content=dsl.encode(),
            headers={"Content-Type": "text/yaml", "Authorization": f"Bearer {self.admin_token}"},
        )
        response.raise_for_status()
        key: str = response.json()["api_key"]
        return key

    def run(self, api_key: str, inputs: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """One blocking run: (client-side seconds, the response's `data`)."""
        started = time.perf_counter()
        response = self.client.post(
            "/v1/workflows/run",
            json={"inputs": inputs, "response_mode": "blocking", "user": "bench"},
            headers={"Authorization": f"Bearer {api_key}"},
        )
        seconds = time.perf_counter() - started
        response.raise_for_status()
        data: dict[str, Any] = response.json()["data"]
        return seconds, data

    def peak_rss_mb(self, name: str) -> float:
        """VmHWM (peak resident set) of one of the mesh's processes (`aggregator`, ...)."""
        for line in Path(f"/proc/{self.pids[name]}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmHWM for {name}")

    def _ours(self, pid: int) -> bool:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        return f"FANFLOW_NAMESPACE={self.namespace}".encode() in environ.split(b"\0")

    def close(self) -> None:
        self.client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for pid in self.pids.values():  # a child left behind: only if it is still ours
            if self._ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            delete_namespace(self.namespace)
        except Exception as exc:
            print(f"warning: deleting namespace {self.namespace}: {exc}")
        if self._created_db:
            _postgres_admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
