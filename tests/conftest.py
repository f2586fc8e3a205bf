"""Fixtures shared by all tests: Dify's engine as an oracle, Dify's test data, real services.

A missing prerequisite fails the test with a message saying how to provide it; nothing
here skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: the steering kit beside the checkout (oracle script, Dify fixtures), not the library
KIT = ROOT.parent / "shared"
_ORACLE_VENVS = (ROOT / ".cache" / "graphon-venv", Path("/tmp/graphon-venv"))
POSTGRES_ADMIN_URL = os.environ.get(
    "FANFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
AMQP_URL = os.environ.get("FANFLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
_START = {  # as in .ci/services
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "RabbitMQ": "rabbitmq-server -detached",
}


def _oracle_paths() -> tuple[Path, Path] | str:
    """(python, script) of the Dify oracle, or why it is unavailable."""
    configured = os.environ.get("FANFLOW_ORACLE_PYTHON")
    pythons = [Path(configured)] if configured else [v / "bin" / "python" for v in _ORACLE_VENVS]
    python = next((p for p in pythons if p.exists()), None)
    script = Path(os.environ.get("FANFLOW_ORACLE_SCRIPT", KIT / "tools" / "dify_oracle.py"))
    if python is None:
        where = configured or " or ".join(str(p) for p in pythons)
        return f"no oracle venv at {where}: build it with `make oracle`"
    if not script.exists():
        return f"oracle script {script} not found: set FANFLOW_ORACLE_SCRIPT"
    return python, script


def pytest_report_header() -> str:
    found = _oracle_paths()
    return f"oracle: {found if isinstance(found, str) else found[0]}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # a test using the `oracle` fixture is an oracle test, so `-m "not oracle"` selects it out
    for item in items:
        if "oracle" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.oracle)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("oracle") and isinstance(found := _oracle_paths(), str):
        pytest.fail(f"oracle test without the oracle: {found}", pytrace=False)


OracleRun = Callable[..., dict[str, Any]]


@pytest.fixture
def oracle() -> OracleRun:
    """Runs a DSL file with Dify's own engine: `oracle(path, inputs, *extra_args)`.

    Returns the oracle's JSON (`status`, `outputs`, `error`, `node_statuses`); extra_args
    are dify_oracle.py options such as `--query`, `--raw-inputs`, `--zero-timings`.
    """
    found = _oracle_paths()
    if isinstance(found, str):
        pytest.fail(found, pytrace=False)
    python, script = found

    def run(
        dsl: Path | str, inputs: Mapping[str, Any] | None = None, *args: str, timeout_s: float = 120
    ) -> dict[str, Any]:
        command = [str(python), str(script), str(dsl), "--inputs", json.dumps(inputs or {})]
        done = subprocess.run(
            [*command, "--json", *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        # 0 succeeded, 1 failed/stopped, 2 invalid, 3 unsupported: all are answers
        if done.returncode not in (0, 1, 2, 3):
            pytest.fail(f"oracle crashed (exit {done.returncode}) on {dsl}:\n{done.stderr}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    return run


@pytest.fixture(scope="session")
def dify_data() -> Path:
    """tests/data/dify: the Dify exports and engine fixtures copied into the repo."""
    path = ROOT / "tests" / "data" / "dify"
    if not path.is_dir():
        pytest.fail(f"{path} is missing", pytrace=False)
    return path


def require_service(url: str, service: str) -> None:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except OSError as exc:
        error = exc
    else:
        return
    pytest.fail(
        f"{service} is not reachable at {parts.hostname}:{parts.port} ({error}); "
        f"start it with `{_START[service]}` (`make services-check` shows all)",
        pytrace=False,
    )


def postgres_admin(sql: str) -> None:
    import asyncpg

    async def execute() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    # its own thread and loop: the caller may be an async test with a running loop
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, execute()).result()


@contextlib.contextmanager
def fresh_postgres_database(prefix: str = "fanflow_test") -> Iterator[str]:
    """An empty PostgreSQL database's SQLAlchemy URL (`postgresql+asyncpg://...`), dropped
    afterwards; fails with how to start PostgreSQL when it is down."""
    require_service(POSTGRES_ADMIN_URL, "PostgreSQL")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    postgres_admin(f'CREATE DATABASE "{name}"')
    try:
        parts = urlsplit(POSTGRES_ADMIN_URL)
        yield urlunsplit(parts._replace(scheme="postgresql+asyncpg", path=f"/{name}"))
    finally:
        postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[Callable[[], str]]:
    """Factory: each call creates an empty database and returns its SQLAlchemy URL
    (`postgresql+asyncpg://...`). The databases are dropped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(fresh_postgres_database())


@pytest.fixture
def amqp_url() -> Callable[[], str]:
    """Factory: the RabbitMQ URL, once the broker accepts connections. Tests share the
    default vhost, so name queues and exchanges with a random suffix."""

    def make() -> str:
        require_service(AMQP_URL, "RabbitMQ")
        return AMQP_URL

    return make
