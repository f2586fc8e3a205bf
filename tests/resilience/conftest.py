"""Redis for the fleet-wide tests: the machine's (keys under a random prefix, removed after
the test) and private ones on free ports for tests that stop Redis."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[2]


def run_probes(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run one `tests.resilience.fleet_probe` process per config, at once; their reports."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.resilience.fleet_probe", json.dumps(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for config in configs
    ]
    results = [json.loads(p.communicate(timeout=90)[0]) for p in processes]
    assert all(p.returncode == 0 for p in processes)
    return results


@pytest.fixture
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis at {REDIS_URL} is needed: start it with `redis-server --daemonize yes` ({exc})"
        )
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted after the test."""
    prefix = f"test-fleet-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@dataclass
class PrivateRedis:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_private_redis(port: int | None = None) -> PrivateRedis:
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail(
            "redis-server is needed for tests that stop Redis (apt-get install redis-server)"
        )
    port = port or _free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port, socket_connect_timeout=0.2).ping()
            return PrivateRedis(port, process)
        except redis.RedisError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"a private redis-server on port {port} did not start")
            time.sleep(0.05)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, which the test may stop."""
    started = start_private_redis()
    yield started
    if started.process.poll() is None:
        started.stop()
