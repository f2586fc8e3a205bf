"""Dify's engine cases whose LLM nodes upstream mocks, through `fanflow run` with real LLM
calls to a `fanflow mock-llm` that answers each node (by `X-Fanflow-Node-Id`) what the
case's `mocks` say it returned; a mocked error is answered with a 4xx, which no retry fixes.

One real HTTP server (uvicorn, in a thread) serves the module: each case gets its own
mock-llm app (`fanflow.llm.mock_server.create_app`, the app `fanflow mock-llm` serves) with its
rules and latency, mounted under `/cases/<case id>`, and runs `fanflow run` in process.
`test_case_cli_processes` runs one case with both commands as subprocesses.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.routing import Mount

from fanflow.llm.mock_server import MockOptions, create_app
from tests.conformance.cases import (
    FIXTURES,
    Case,
    graph_patches,
    llm_delay_ms,
    llm_replies,
    load_cases,
    needs_mock_llm,
)
from tests.conformance.test_conformance import check, fanflow_run, fanflow_run_process

CASES = load_cases()
LLM_CASES = [case for case in CASES if needs_mock_llm(case)]
#: the case also run with `fanflow mock-llm` and `fanflow run` as subprocesses
CLI_PROCESS_CASE = "30-basic_llm_chat_workflow"


def mock_rules(case: Case) -> list[dict[str, Any]]:
    """The case's mocked answers as mock-llm rules, one per LLM node."""
    replies = llm_replies(case)
    assert replies is not None
    return [{"node": node_id, **reply} for node_id, reply in replies.items()]


class MockLLMServer:
    """One uvicorn server on a free port, in a thread: a mock-llm app per case, at
    `/cases/<case id>`, answering with that case's rules after that case's latency."""

    def __init__(self, cases: list[Case]) -> None:
        mounts = [
            Mount(
                f"/cases/{case.id}",
                app=create_app(
                    MockOptions(replies=tuple(mock_rules(case)), latency_ms=llm_delay_ms(case))
                ),
            )
            for case in cases
        ]
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(
            Starlette(routes=mounts), log_level="warning", lifespan="off", ws="none"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                pytest.fail("the mock-llm server did not start within 20 s")
            time.sleep(0.01)

    def url(self, case: Case) -> str:
        return f"http://127.0.0.1:{self.port}/cases/{case.id}/v1"

    def requests(self, case: Case) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = httpx.get(
            f"http://127.0.0.1:{self.port}/cases/{case.id}/requests", timeout=5
        ).json()
        return answer

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@pytest.fixture(scope="module")
def mock_llm_server() -> Iterator[MockLLMServer]:
    server = MockLLMServer(LLM_CASES)
    try:
        yield server
    finally:
        server.close()


class MockLLMProcess:
    """A `fanflow mock-llm` process on a free port."""

    def __init__(self, tmp_path: Path, replies: list[dict[str, Any]], *args: str) -> None:
        replies_file = tmp_path / "replies.json"
        replies_file.write_text(json.dumps(replies, ensure_ascii=False), encoding="utf-8")
        port_file = tmp_path / "mock.port"
        self.log = (tmp_path / "mock.log").open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fanflow_services.cli",
                "mock-llm",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--replies",
                str(replies_file),
                *args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.close()
                log = (tmp_path / "mock.log").read_text(encoding="utf-8")
                pytest.fail(f"mock-llm exited {self.process.returncode}: {log}")
            if port_file.exists() and port_file.read_text():
                self.port = int(port_file.read_text())
                try:
                    httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1)
                except httpx.HTTPError:
                    pass
                else:
                    return
            time.sleep(0.05)
        self.close()
        pytest.fail("mock-llm did not start within 20 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = httpx.get(
            f"http://127.0.0.1:{self.port}/requests", timeout=5
        ).json()
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def isolated_llm_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """`fanflow run` (in process, or a subprocess inheriting this environment) sees only
    the mock."""
    for name in ("FANFLOW_LLM_PROVIDERS_FILE", "FANFLOW_LLM_API_KEY", "FANFLOW_LLM_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def fixture_for(case: Case, tmp_path: Path) -> Path:
    """The fixture, or a copy with the node changes upstream's test makes before running."""
    patches = graph_patches(case)
    if not patches:
        return FIXTURES / case.fixture
    document = yaml.safe_load((FIXTURES / case.fixture).read_text(encoding="utf-8"))
    graph = (document.get("workflow") or document)["graph"]
    for node in graph["nodes"]:
        node["data"].update(patches.pop(str(node["id"]), {}))
    assert not patches, f"patched nodes missing from {case.fixture}: {sorted(patches)}"
    patched = tmp_path / Path(case.fixture).name
    patched.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return patched


def check_llm_case(
    case: Case, result: dict[str, Any], asked: list[dict[str, Any]], elapsed_s: float
) -> None:
    check(case, result)
    # every LLM call went to the mock, named its node, and was answered by that node's rule
    replies = llm_replies(case)
    assert replies is not None
    assert asked, "no LLM request reached the mock"
    assert {request["node_id"] for request in asked} <= set(replies), asked
    assert elapsed_s >= llm_delay_ms(case) / 1000
    if case.expected_status == "failed":  # failed because a mocked error said so
        errors = [reply["error"] for reply in replies.values() if "error" in reply]
        assert any(error in str(result.get("error")) for error in errors), result


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in LLM_CASES])
def test_case(
    case: Case,
    tmp_path: Path,
    isolated_llm_env: pytest.MonkeyPatch,
    mock_llm_server: MockLLMServer,
) -> None:
    isolated_llm_env.setenv("FANFLOW_LLM_BASE_URL", mock_llm_server.url(case))
    started = time.monotonic()
    result = fanflow_run(fixture_for(case, tmp_path), case.inputs, case.query, tmp_path)
    elapsed_s = time.monotonic() - started
    check_llm_case(case, result, mock_llm_server.requests(case), elapsed_s)


def test_case_cli_processes(tmp_path: Path, isolated_llm_env: pytest.MonkeyPatch) -> None:
    """One case with `fanflow mock-llm` and `fanflow run` as subprocesses."""
    (case,) = [case for case in LLM_CASES if case.id == CLI_PROCESS_CASE]
    delay_ms = llm_delay_ms(case)
    mock = MockLLMProcess(tmp_path, mock_rules(case), "--latency-ms", f"{delay_ms:g}")
    try:
        isolated_llm_env.setenv("FANFLOW_LLM_BASE_URL", mock.url)
        started = time.monotonic()
        result = fanflow_run_process(fixture_for(case, tmp_path), case.inputs, case.query, tmp_path)
        elapsed_s = time.monotonic() - started
        asked = mock.requests()
    finally:
        mock.close()
    check_llm_case(case, result, asked, elapsed_s)


def test_enough_llm_cases_run() -> None:
    """Guards against the selection silently shrinking: of the 17 cases whose only mocks are
    LLM answers, 3 cannot make a real call (see `why_no_real_llm_call`)."""
    assert len(LLM_CASES) >= 14, [c.id for c in LLM_CASES]
