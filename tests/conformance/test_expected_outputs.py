"""The outputs `expected_outputs.py` takes from Dify's engine are what the oracle reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.cases import FIXTURES, Case, load_cases, needs_mock_llm
from tests.conformance.expected_outputs import ORACLE
from tests.conformance.test_conformance_llm import MockLLMServer, fixture_for
from tests.conftest import OracleRun

FROM_ORACLE = [case for case in load_cases() if case.outputs_source.startswith(ORACLE)]


def _source(case: Case) -> str:
    lines = (FIXTURES / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    source: str = json.loads(lines[case.line - 1]).get("source", "")
    return source


@pytest.mark.parametrize("case", FROM_ORACLE, ids=[case.id for case in FROM_ORACLE])
def test_expected_outputs_are_difys(case: Case, oracle: OracleRun, tmp_path: Path) -> None:
    inputs: dict[str, Any] = dict(case.inputs)
    args: list[str] = []
    query = case.query
    if "langgenius/dify" in _source(case):
        # as Dify's TableTestRunner: inputs straight into the pool, sys.query always set
        query = query or ""
        inputs.setdefault("query", query)
        args.append("--raw-inputs")
    if query is not None:
        args += ["--query", query]
    if case.mocks.get("mode") == "http_fixture":
        args.append("--allow-http")  # loopback only: the fixture's host stays unreachable
    mock = MockLLMServer([case]) if needs_mock_llm(case) else None
    try:
        if mock is not None:
            args += ["--llm-base-url", mock.url(case)]
        result = oracle(fixture_for(case, tmp_path), inputs, *args)
    finally:
        if mock is not None:
            mock.close()
    assert (result["status"], result["outputs"]) == (
        case.expected_status,
        case.expected_outputs,
    ), result


def test_table_names_its_oracle_entries() -> None:
    assert len(FROM_ORACLE) == 8, [case.id for case in FROM_ORACLE]
