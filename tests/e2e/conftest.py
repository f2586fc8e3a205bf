"""End-to-end fixtures: `fanflow mock-llm` processes on chosen ports (so one can be killed
and started again where the workers expect it) and Prometheus scrapes of worker /metrics."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.llm.conftest import MockLLM

# Redis for the fleet-wide tests: the machine's, keys under a random prefix
from tests.resilience.conftest import redis_prefix, redis_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
E2E_DATA = ROOT / "tests" / "data" / "e2e"
DIFY_DSL = ROOT / "tests" / "data" / "dify" / "dsl"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Mocks:
    """Starts `fanflow mock-llm` processes; stops them (or all at teardown)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: list[MockLLM] = []

    def start(self, *args: str, port: int = 0) -> MockLLM:
        port_file = self.directory / f"mock-{len(self.running)}-{time.monotonic_ns()}.port"
        log = (self.directory / f"{port_file.stem}.log").open("wb")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fanflow_services.cli",
                "mock-llm",
                "--port",
                str(port),
                "--port-file",
                str(port_file),
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        mock = MockLLM(0, process)  # type: ignore[arg-type]
        self.running.append(mock)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                text = (self.directory / f"{port_file.stem}.log").read_text(errors="replace")
                pytest.fail(f"mock-llm exited {process.returncode}: {text}")
            if port_file.exists() and port_file.read_text():
                mock.port = int(port_file.read_text())
                try:
                    httpx.get(f"http://127.0.0.1:{mock.port}/health", timeout=1)
                except httpx.HTTPError:
                    pass
                else:
                    return mock
            time.sleep(0.05)
        pytest.fail("mock-llm did not start within 20 s")

    def stop(self, mock: MockLLM) -> None:
        if mock.process.poll() is None:
            mock.process.terminate()
            try:
                mock.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                mock.process.kill()
                mock.process.wait()


@pytest.fixture
def mocks(tmp_path: Path) -> Iterator[Mocks]:
    started = Mocks(tmp_path)
    yield started
    for mock in started.running:
        started.stop(mock)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of a /metrics page: (name, sorted labels) → value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        value
        for (sample, found), value in samples.items()
        if sample == name and set(labels.items()) <= set(found)
    )


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    """`name`'s samples (filtered by `labels`) summed per value of `label`."""
    out: dict[str, float] = {}
    for (sample, found), value in samples.items():
        found_map = dict(found)
        if sample == name and set(labels.items()) <= set(found) and label in found_map:
            out[found_map[label]] = out.get(found_map[label], 0) + value
    return out
