"""Dify's engine cases whose LLM nodes upstream mocks, through `fanflow run` with real LLM
calls to a `fanflow mock-llm` that answers each node (by `X-Fanflow-Node-Id`) what the
case's `mocks` say it returned; a mocked error is answered with a 4xx, which no retry fixes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conformance.cases import (
    FIXTURES,
    Case,
    graph_patches,
    llm_delay_ms,
    llm_replies,
    load_cases,
    needs_mock_llm,
    outputs_match,
)
from tests.conformance.test_conformance import fanflow_run

CASES = load_cases()
LLM_CASES = [case for case in CASES if needs_mock_llm(case)]


class MockLLM:
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
                "fanflow.cli",
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
    """`fanflow run` (a subprocess, inheriting this environment) sees only the mock."""
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


@pytest.mark.parametrize("case", LLM_CASES, ids=[c.id for c in LLM_CASES])
def test_case(case: Case, tmp_path: Path, isolated_llm_env: pytest.MonkeyPatch) -> None:
    replies = llm_replies(case)
    assert replies is not None
    rules = [{"node": node_id, **reply} for node_id, reply in replies.items()]
    delay_ms = llm_delay_ms(case)
    mock = MockLLM(tmp_path, rules, "--latency-ms", f"{delay_ms:g}")
    try:
        isolated_llm_env.setenv("FANFLOW_LLM_BASE_URL", mock.url)
        started = time.monotonic()
        result = fanflow_run(fixture_for(case, tmp_path), case.inputs, case.query, tmp_path)
        elapsed_s = time.monotonic() - started
        asked = mock.requests()
    finally:
        mock.close()
    assert result["status"] == case.expected_status, result
    assert outputs_match(result["outputs"], case.expected_outputs, exact=case.exact_outputs), (
        f"outputs {result['outputs']!r} != expected {case.expected_outputs!r}"
    )
    # every LLM call went to the mock, named its node, and was answered by that node's rule
    assert asked, "no LLM request reached the mock"
    assert {request["node_id"] for request in asked} <= set(replies), asked
    assert elapsed_s >= delay_ms / 1000
    if case.expected_status == "failed":  # failed because a mocked error said so
        errors = [reply["error"] for reply in replies.values() if "error" in reply]
        assert any(error in str(result.get("error")) for error in errors), result


def test_enough_llm_cases_run() -> None:
    """Guards against the selection silently shrinking: of the 17 cases whose only mocks are
    LLM answers, 3 cannot make a real call (see `why_no_real_llm_call`)."""
    assert len(LLM_CASES) >= 14, [c.id for c in LLM_CASES]
