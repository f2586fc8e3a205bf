"""LLM test fixtures: a real `fanflow mock-llm` process per test, and node tasks to run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

# registers the LLM executors in this process (subprocesses rely on fanflow.executors)
from fanflow.executors import ExecutionContext, llm, parameter_extractor, question_classifier
from fanflow.llm import Providers
from fanflow.messages import NodeTask

# Redis for the LLM cache tests: the machine's under a random prefix, or a private one
from tests.resilience.conftest import private_redis, redis_prefix, redis_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
LLM_DATA = ROOT / "tests" / "data" / "llm"
LLM_EXECUTORS = (llm, parameter_extractor, question_classifier)


@dataclass
class MockLLM:
    """A running `fanflow mock-llm`."""

    port: int
    process: subprocess.Popen[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=5).json()

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"http://127.0.0.1:{self.port}/requests", timeout=5).json()

    def last_body(self) -> dict[str, Any]:
        body: dict[str, Any] = self.requests()[-1]["body"]
        return body

    def context(self, **overrides: Any) -> ExecutionContext:
        """An execution context whose every provider points at this mock."""
        providers = Providers(default_base_url=self.url, timeout_s=overrides.pop("timeout_s", 10))
        return ExecutionContext(llm_providers=providers, **overrides)


MockFactory = Callable[..., MockLLM]


@pytest.fixture
def mock_llm(tmp_path: Path) -> Iterator[MockFactory]:
    """Factory: `mock_llm("--mode", "echo", replies=[...])` starts a mock on a free port."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, replies: Any = None) -> MockLLM:
        index = len(started)
        port_file = tmp_path / f"mock-{index}.port"
        extra = list(args)
        if replies is not None:
            replies_file = tmp_path / f"replies-{index}.json"
            replies_file.write_text(json.dumps(replies), encoding="utf-8")
            extra += ["--replies", str(replies_file)]
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fanflow_services.cli",
                "mock-llm",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"mock-llm exited {process.returncode}: {process.stderr.read()}")
            if port_file.exists() and port_file.read_text():
                mock = MockLLM(int(port_file.read_text()), process)
                try:
                    httpx.get(f"http://127.0.0.1:{mock.port}/health", timeout=1)
                except httpx.HTTPError:
                    pass
                else:
                    return mock
            time.sleep(0.05)
        pytest.fail("mock-llm did not start within 20 s")

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def make_task(
    node_type: str, data: Mapping[str, Any], variables: Mapping[str, Any] | None = None
) -> NodeTask:
    return NodeTask(
        task_id=f"run/-/n1/0/{node_type}",
        run_id="run",
        node_id="n1",
        node_type=node_type,
        node_title="Node",
        data=dict(data),
        variables=dict(variables or {}),
    )


def llm_data(prompt: Any, **extra: Any) -> dict[str, Any]:
    """An llm node's data with `model` gpt-test on provider openai."""
    model = {"provider": "openai", "name": "gpt-test", "mode": "chat"}
    model.update(extra.pop("model", {}))
    return {"type": "llm", "model": model, "prompt_template": prompt, **extra}
