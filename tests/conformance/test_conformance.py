"""Dify's engine fixtures through `fanflow run`: same outputs, same status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance.cases import FIXTURES, Case, load_cases, outputs_match, why_not_runnable

CASES = load_cases()
RUNNABLE = [case for case in CASES if why_not_runnable(case) is None]


def fanflow_run(fixture: Path, inputs: dict, query: str | None, tmp_path: Path) -> dict:
    inputs_file = tmp_path / "inputs.json"
    inputs_file.write_text(json.dumps(inputs), encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "fanflow.cli",
        "run",
        str(fixture),
        "--inputs-file",
        str(inputs_file),
        "--json",
    ]
    if query is not None:
        command += ["--query", query]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode in (0, 1), f"exit {done.returncode}: {done.stderr}"
    result = json.loads(done.stdout)
    expected_exit = 0 if result["status"] in ("succeeded", "partial-succeeded") else 1
    assert done.returncode == expected_exit, done.stderr
    return result


@pytest.mark.parametrize("case", RUNNABLE, ids=[c.id for c in RUNNABLE])
def test_case(case: Case, tmp_path: Path) -> None:
    result = fanflow_run(FIXTURES / case.fixture, case.inputs, case.query, tmp_path)
    assert result["status"] == case.expected_status, result
    assert outputs_match(result["outputs"], case.expected_outputs, exact=case.exact_outputs), (
        f"outputs {result['outputs']!r} != expected {case.expected_outputs!r}"
    )


@pytest.mark.parametrize(
    "query", ["", "hello", "say hello", "Hello", "héllo wörld 你好", "x" * 500, "hel lo"]
)
def test_property_cases(query: str, tmp_path: Path) -> None:
    """The two `<PROPERTY>` cases, over a spread of texts."""
    fixture = FIXTURES / "simple_passthrough_workflow.yml"
    result = fanflow_run(fixture, {"query": query}, None, tmp_path)
    assert result["outputs"]["query"] == query
    fixture = FIXTURES / "conditional_hello_branching_workflow.yml"
    result = fanflow_run(fixture, {"query": query}, None, tmp_path)
    branch = "true" if "hello" in query else "false"
    assert result["outputs"] == {branch: query}


def test_enough_cases_run() -> None:
    """Guards against the selection silently shrinking."""
    assert len(RUNNABLE) >= 40, [(c.id, why_not_runnable(c)) for c in CASES]
