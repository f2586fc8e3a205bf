"""`fanflow dev`: the whole mesh as local processes — trigger, one aggregator, N workers.

Checks first that RabbitMQ and the database answer (and says how to start what does not),
then starts every service as `python -m fanflow.cli ...` with this process's settings,
passes them one result key (FANFLOW_RESULT_KEY, generated for this run unless one is
configured) so the aggregator applies only the results its workers signed,
prefixes each output line with the process name, and prints a ready line once the
trigger's /healthz answers. Ctrl-C or SIGTERM stops them all: SIGTERM each, wait up to the
drain timeout, then SIGKILL. A child that dies on its own stops the others and makes the
exit status non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from fanflow import Settings

#: how long the trigger may take to answer /healthz after starting
READY_TIMEOUT_S = 60.0
#: on top of the drain timeout: interpreter teardown after the drain
STOP_MARGIN_S = 5.0
_POLL_S = 0.2
_START_RABBITMQ = "rabbitmq-server -detached  (or: docker compose up -d rabbitmq)"


def _start_postgres() -> str:
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*") if p.is_dir())
    version = versions[-1] if versions else "<version>"
    return f"pg_ctlcluster --skip-systemctl-redirect {version} main start  (or: docker compose up -d postgres)"


def _reachable(url: str, default_port: int) -> tuple[str, OSError | None]:
    parts = urlsplit(url)
    where = f"{parts.hostname or '127.0.0.1'}:{parts.port or default_port}"
    try:
        socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 3
        ).close()
    except OSError as exc:
        return where, exc
    return where, None


async def _probe(settings: Settings) -> list[str]:
    from fanflow.mesh.amqp import AmqpBroker, BrokerError
    from fanflow.store import migrate

    problems = []
    broker = AmqpBroker(settings.amqp_url, connection_name="fanflow-dev-check")
    try:
        await asyncio.wait_for(broker.connect(), 10)
    except (BrokerError, TimeoutError) as exc:
        problems.append(
            f"RabbitMQ accepts TCP but refused fanflow ({exc}); check the user, password and "
            f"vhost in FANFLOW_AMQP_URL"
        )
    finally:
        await broker.close()
    if settings.database_url.startswith("postgresql"):
        try:
            # migrating once here also keeps the children from racing to do it
            await asyncio.wait_for(migrate(settings.database_url), 30)
        except Exception as exc:
            cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
            problems.append(
                f"PostgreSQL accepts TCP but fanflow cannot use it ({cause}); check the user, "
                f"password and database in FANFLOW_DATABASE_URL (createdb it if missing)"
            )
    return problems


def check_services(settings: Settings, *, port: int) -> list[str]:
    """What keeps the mesh from starting: one message per problem, saying how to fix it."""
    problems = []
    where, error = _reachable(settings.amqp_url, 5672)
    if error is not None:
        problems.append(
            f"RabbitMQ is not reachable at {where} (FANFLOW_AMQP_URL; {error.strerror or error}); "
            f"start it with: {_START_RABBITMQ}"
        )
    if settings.database_url.startswith("postgresql"):
        db_where, db_error = _reachable(settings.database_url, 5432)
        if db_error is not None:
            problems.append(
                f"PostgreSQL is not reachable at {db_where} (FANFLOW_DATABASE_URL; "
                f"{db_error.strerror or db_error}); start it with: {_start_postgres()}"
            )
    elif not settings.database_url.startswith("sqlite"):
        problems.append(
            f"FANFLOW_DATABASE_URL {settings.database_url!r}: expected sqlite or postgresql"
        )
    with socket.socket() as probe:
        # as uvicorn does: a port in TIME_WAIT from the last run is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            problems.append(f"port {port} is in use; pick another with --port")
    if not problems:
        problems = asyncio.run(_probe(settings))
    return problems


@dataclass
class _Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = field(default=None, repr=False)


class _Mesh:
    def __init__(self, settings: Settings, *, port: int, workers: int) -> None:
        if settings.result_key is None and settings.result_key_file is None:
            # one secret per deployment: a fresh one for each `fanflow dev`
            settings = settings.model_copy(update={"result_key": SecretStr(secrets.token_hex(32))})
        self.settings = settings
        self.port = port
        self._lock = threading.Lock()
        cli = [sys.executable, "-m", "fanflow_services.cli"]
        metrics = settings.metrics_port
        self.children = [
            _Child(
                "trigger",
                [*cli, "trigger", "--host", "127.0.0.1", "--port", str(port)],
                self._env(None),
            ),
            _Child("aggregator", [*cli, "aggregator"], self._env(metrics)),
        ] + [
            _Child(f"worker-{i}", [*cli, "worker"], self._env(metrics + i if metrics else None))
            for i in range(1, workers + 1)
        ]

    def _env(self, metrics_port: int | None) -> dict[str, str]:
        # the settings object wins over the environment it was (probably) built from
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for name, value in self.settings.model_dump().items():
            key = f"FANFLOW_{name.upper()}"
            if isinstance(value, SecretStr):
                env[key] = value.get_secret_value()
            elif value is None:
                env.pop(key, None)
            elif isinstance(value, tuple | list):  # as the settings read them: comma-separated
                env[key] = ",".join(str(entry) for entry in value)
            else:
                env[key] = str(value)
        # one port per process: N workers cannot share the parent's FANFLOW_METRICS_PORT
        env.pop("FANFLOW_METRICS_PORT", None)
        if metrics_port:
            env["FANFLOW_METRICS_PORT"] = str(metrics_port)
        return env

    def say(self, name: str, line: str) -> None:
        with self._lock:
            sys.stdout.write(f"[{name}] {line}\n")
            sys.stdout.flush()

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.say(name, raw.decode("utf-8", "replace").rstrip("\r\n"))
        stream.close()

    def start(self) -> None:
        for child in self.children:
            child.process = subprocess.Popen(
                child.argv,
                env=child.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # its own process group: Ctrl-C reaches only us, and we stop children in order
                start_new_session=True,
            )
            assert child.process.stdout is not None
            child.reader = threading.Thread(
                target=self._pump, args=(child.name, child.process.stdout), daemon=True
            )
            child.reader.start()
            self.say("dev", f"started {child.name} (pid {child.process.pid})")

    def dead(self) -> _Child | None:
        return next((c for c in self.children if c.process and c.process.poll() is not None), None)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, force: threading.Event) -> bool:
        """SIGTERM all, SIGKILL what is left after the drain timeout; True if none was killed."""
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout_s + STOP_MARGIN_S
        while any(c.process.poll() is None for c in running if c.process):
            if time.monotonic() > deadline or force.is_set():
                break
            time.sleep(_POLL_S)
        clean = True
        for child in running:
            assert child.process is not None
            if child.process.poll() is None:
                clean = False
                self.say("dev", f"{child.name} did not stop in time: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        for child in self.children:
            if child.reader is not None:
                child.reader.join(timeout=2)
        return clean


def run(settings: Settings, *, port: int, workers: int) -> int:
    """Run the mesh until Ctrl-C/SIGTERM (exit 0) or until a child dies (exit 1)."""
    if workers < 1:
        print("fanflow dev: --workers must be at least 1", file=sys.stderr)
        return 2
    problems = check_services(settings, port=port)
    if problems:
        for problem in problems:
            print(f"fanflow dev: {problem}", file=sys.stderr)
        return 1

    stop, force = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            force.set()  # a second Ctrl-C: do not wait for the drain
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    mesh = _Mesh(settings, port=port, workers=workers)
    status = 0
    try:
        mesh.start()
        ready_by = time.monotonic() + READY_TIMEOUT_S
        ready = False
        while not stop.is_set():
            if (dead := mesh.dead()) is not None:
                assert dead.process is not None
                mesh.say(
                    "dev",
                    f"{dead.name} exited unexpectedly (exit {dead.process.returncode}); "
                    "stopping the others",
                )
                status = 1
                break
            if not ready:
                if mesh.healthy():
                    ready = True
                    metrics = settings.metrics_port
                    extra = f"; metrics on ports {metrics}-{metrics + workers}" if metrics else ""
                    mesh.say(
                        "dev",
                        f"ready: http://127.0.0.1:{port} (1 aggregator, {workers} "
                        f"worker(s){extra}); Ctrl-C stops them all",
                    )
                elif time.monotonic() > ready_by:
                    mesh.say(
                        "dev",
                        f"the trigger did not answer /healthz within "
                        f"{READY_TIMEOUT_S:g} s; stopping",
                    )
                    status = 1
                    break
            stop.wait(_POLL_S)
        if stop.is_set():
            mesh.say("dev", "stopping (SIGTERM; Ctrl-C again to kill)")
    finally:
        clean = mesh.stop(force)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    mesh.say("dev", "all stopped" if clean else "all stopped (some killed)")
    return status
