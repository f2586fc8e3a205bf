"""`fanflow dev`: the mesh as local processes, started, checked and stopped for real.

Uses SQLite, the real RabbitMQ (a missing broker fails the test and says how to start it)
and a random namespace whose queues are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fanflow_services.dev import STOP_MARGIN_S

from fanflow.mesh.amqp import AmqpBroker
from fanflow.mesh.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
DRAIN_TIMEOUT_S = 5.0
READY_WITHIN_S = 60.0
_DEV = (sys.executable, "-m", "fanflow_services.cli", "dev")
_STARTED = re.compile(r"^\[dev\] started (\S+) \(pid (\d+)\)$")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _require_services() -> None:
    missing = [
        f"services/{name}/main.py"
        for name in ("trigger", "aggregator", "worker")
        if not (ROOT / "services" / name / "main.py").exists()
    ]
    if missing:
        pytest.fail(f"`fanflow dev` needs {', '.join(missing)}, not written yet", pytrace=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class DevProcess:
    """`fanflow dev` in a subprocess; its output lines arrive on a queue as they are printed."""

    def __init__(self, env: dict[str, str], *, port: int, workers: int) -> None:
        self.port = port
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(
            [*_DEV, "--port", str(port), "--workers", str(workers)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float) -> str:
        """The first line so far, or within `timeout_s`, for which `predicate` holds."""
        seen = next((line for line in self.lines if predicate(line)), None)
        if seen is not None:
            return seen
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if predicate(line):
                return line
        pytest.fail(f"`fanflow dev` output did not show what was awaited:\n{self.output()}")

    def drain_output(self) -> None:
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def pids(self) -> dict[str, int]:
        return {m[1]: int(m[2]) for line in self.lines if (m := _STARTED.match(line))}

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in self.pids().values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._pump_thread.join(timeout=10)


async def _delete_topology(amqp_url: str, namespace: str) -> None:
    async with AmqpBroker(amqp_url, topology=Topology(namespace=namespace)) as broker:
        await broker.delete_topology()


@pytest.fixture
def dev_env(amqp_url: Callable[[], str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a `fanflow dev` on SQLite and a fresh namespace (deleted after)."""
    url = amqp_url()
    namespace = f"test-dev-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANFLOW_")}
    env |= {
        "FANFLOW_AMQP_URL": url,
        "FANFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}",
        "FANFLOW_NAMESPACE": namespace,
        "FANFLOW_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
    }
    yield env
    asyncio.run(_delete_topology(url, namespace))


def test_dev_starts_the_mesh_and_stops_it_on_sigterm(dev_env: dict[str, str]) -> None:
    _require_services()
    port = _free_port()
    dev = DevProcess(dev_env, port=port, workers=1)
    try:
        ready = dev.wait_for(lambda line: line.startswith("[dev] ready:"), READY_WITHIN_S)
        assert f"http://127.0.0.1:{port}" in ready
        pids = dev.pids()
        assert set(pids) == {"trigger", "aggregator", "worker-1"}, dev.output()
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        # every child's output reaches ours, prefixed with its name
        dev.wait_for(lambda line: line.startswith("[worker-1] "), 30)

        dev.process.send_signal(signal.SIGTERM)
        assert dev.process.wait(timeout=DRAIN_TIMEOUT_S + STOP_MARGIN_S + 10) == 0, dev.output()
        dev.drain_output()
        assert not [name for name, pid in pids.items() if _alive(pid)], dev.output()
        assert "[dev] all stopped" in dev.lines, dev.output()
    finally:
        dev.kill()


def test_dev_stops_everything_when_a_child_dies(dev_env: dict[str, str]) -> None:
    _require_services()
    dev = DevProcess(
        dev_env | {"FANFLOW_WORKER_QUEUES": "no-such-class"}, port=_free_port(), workers=1
    )
    try:
        assert dev.process.wait(timeout=READY_WITHIN_S + DRAIN_TIMEOUT_S + STOP_MARGIN_S) == 1
        dev.drain_output()
        assert any("worker-1 exited unexpectedly" in line for line in dev.lines), dev.output()
        assert not [name for name, pid in dev.pids().items() if _alive(pid)], dev.output()
    finally:
        dev.kill()


def test_dev_says_how_to_start_what_is_missing(tmp_path: Path) -> None:
    closed = _free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANFLOW_")}
    env |= {
        "FANFLOW_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{closed}/",
        "FANFLOW_DATABASE_URL": f"postgresql+asyncpg://fanflow@127.0.0.1:{closed}/fanflow",
    }
    done = subprocess.run(
        [*_DEV, "--port", str(_free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"RabbitMQ is not reachable at 127.0.0.1:{closed}" in done.stderr
    assert "rabbitmq-server -detached" in done.stderr
    assert f"PostgreSQL is not reachable at 127.0.0.1:{closed}" in done.stderr
    assert "pg_ctlcluster" in done.stderr
    assert "started" not in done.stdout  # nothing was started


def test_dev_needs_nothing_for_sqlite_but_the_broker(tmp_path: Path) -> None:
    closed = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANFLOW_")}
    env |= {
        "FANFLOW_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{closed}/",
        "FANFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}",
    }
    done = subprocess.run(
        [*_DEV, "--port", str(_free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "RabbitMQ is not reachable" in done.stderr
    assert "PostgreSQL" not in done.stderr


def test_dev_passes_list_settings_to_its_children_as_the_settings_read_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fanflow_services.dev import _Mesh

    from fanflow.settings import Settings

    allowed = ("10.1.0.0/16", "*.corp.example", "intranet")
    mesh = _Mesh(Settings(http_allow_list=allowed), port=_free_port(), workers=1)
    env = mesh._env(None)
    assert env["FANFLOW_HTTP_ALLOW_LIST"] == "10.1.0.0/16,*.corp.example,intranet"
    # a child builds its settings from that environment: the same allow list
    for name in [name for name in os.environ if name.startswith("FANFLOW_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("FANFLOW_"):
            monkeypatch.setenv(name, value)
    assert Settings().http_allow_list == allowed
