"""Dify's engine fixtures through `fanflow run --json`: same outputs, same status.

Every case runs the `run` command in this process (typer's CliRunner: the command's own
code, settings and JSON, without an interpreter start per case); `CLI_PROCESS_CASES` also
run as `python -m fanflow.cli run` subprocesses, so the entry point and exit codes stay
covered.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fanflow.cli import app
from tests.conformance.cases import (
    FIXTURES,
    FROM_CASES_FILE,
    Case,
    load_cases,
    needs_mock_llm,
    outputs_match,
    why_not_runnable,
)
from tests.conformance.expected_outputs import EXPECTED_OUTPUTS

CASES = load_cases()
RUNNABLE = [case for case in CASES if why_not_runnable(case) is None]
#: also run through a `fanflow run` subprocess: a success, a chatflow with --query, code
#: nodes in the sandbox, a partial success (default-value), a failed run
CLI_PROCESS_CASES = [
    case
    for case in RUNNABLE
    if case.id
    in (
        "33-simple_passthrough_workflow",
        "17-loop_contains_answer",
        "67-conditional_parallel_code_execution_workflow",
        "66-builder_restricted/http_default_output",
        "84-graphon_tests/graphon_iteration_error_terminated",
    )
]
_cli = CliRunner()


def _run_args(
    fixture: Path, inputs: dict[str, Any], query: str | None, tmp_path: Path
) -> list[str]:
    inputs_file = tmp_path / "inputs.json"
    inputs_file.write_text(json.dumps(inputs), encoding="utf-8")
    args = ["run", str(fixture), "--inputs-file", str(inputs_file), "--json"]
    return args if query is None else [*args, "--query", query]


def _checked(exit_code: int, stdout: str, stderr: str) -> dict[str, Any]:
    assert exit_code in (0, 1), f"exit {exit_code}: {stderr}"
    result: dict[str, Any] = json.loads(stdout)
    expected_exit = 0 if result["status"] in ("succeeded", "partial-succeeded") else 1
    assert exit_code == expected_exit, stderr
    return result


def fanflow_run(
    fixture: Path, inputs: dict[str, Any], query: str | None, tmp_path: Path
) -> dict[str, Any]:
    """`fanflow run FIXTURE --json` in this process: the run as the command prints it."""
    done = _cli.invoke(app, _run_args(fixture, inputs, query, tmp_path), catch_exceptions=False)
    return _checked(done.exit_code, done.stdout, done.stderr)


def fanflow_run_process(
    fixture: Path, inputs: dict[str, Any], query: str | None, tmp_path: Path
) -> dict[str, Any]:
    """`python -m fanflow.cli run FIXTURE --json` as a subprocess."""
    command = [
        sys.executable,
        "-m",
        "fanflow_services.cli",
        *_run_args(fixture, inputs, query, tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    return _checked(done.returncode, done.stdout, done.stderr)


def check(case: Case, result: dict[str, Any]) -> None:
    assert result["status"] == case.expected_status, result
    assert outputs_match(result["outputs"], case.expected_outputs, exact=case.exact_outputs), (
        f"outputs {result['outputs']!r} != expected {case.expected_outputs!r} "
        f"({case.outputs_source})"
    )


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in RUNNABLE])
def test_case(case: Case, tmp_path: Path) -> None:
    check(case, fanflow_run(FIXTURES / case.fixture, case.inputs, case.query, tmp_path))


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=c.marks) for c in CLI_PROCESS_CASES]
)
def test_case_cli_process(case: Case, tmp_path: Path) -> None:
    check(case, fanflow_run_process(FIXTURES / case.fixture, case.inputs, case.query, tmp_path))


@pytest.mark.parametrize(
    "query", ["", "hello", "say hello", "Hello", "héllo wörld 你好", "x" * 500, "hel lo"]
)
def test_property_cases(query: str, tmp_path: Path) -> None:
    """The two `<PROPERTY>` cases, over a spread of texts."""
    fixture = FIXTURES / "simple_passthrough_workflow.yml"
    result = fanflow_run(fixture, {"query": query}, None, tmp_path)
    assert result["outputs"] == {"query": query}
    fixture = FIXTURES / "conditional_hello_branching_workflow.yml"
    result = fanflow_run(fixture, {"query": query}, None, tmp_path)
    branch = "true" if "hello" in query else "false"
    assert result["outputs"] == {branch: query}


def test_enough_cases_run() -> None:
    """Guards against the selection silently shrinking."""
    assert len(RUNNABLE) >= 40, [(c.id, why_not_runnable(c)) for c in CASES]
    assert len(CLI_PROCESS_CASES) == 5, [c.id for c in CLI_PROCESS_CASES]


def test_every_case_compares_outputs() -> None:
    """Each case that runs has outputs to compare: its own, or a table entry saying where
    they come from; the table names only cases that run."""
    running = {case.id: case for case in CASES if why_not_runnable(case) is None}
    running |= {case.id: case for case in CASES if needs_mock_llm(case)}
    unstated = [
        case.id
        for case in running.values()
        if case.outputs_source == FROM_CASES_FILE and case.expected_outputs in (None, {})
    ]
    assert not unstated, f"add these cases to expected_outputs.py: {unstated}"
    assert set(EXPECTED_OUTPUTS) <= set(running), set(EXPECTED_OUTPUTS) - set(running)
