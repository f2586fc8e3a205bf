"""Dify's engine cases through the mesh, on PostgreSQL and on SQLite: the same status and
outputs as the embedded runner (`fanflow run`), and as the case expects.

Per backend, one cluster (2 workers, 1 aggregator) runs every case at once; each test then
checks one case's finished run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from fanflow.dsl.load import load_workflow
from fanflow.runner import EmbeddedRunner, RunResult
from fanflow.runtime import RunRequest
from fanflow.store import RunRecord
from tests.conformance.cases import FIXTURES, load_cases, outputs_match, why_not_runnable
from tests.mesh.conftest import BACKENDS, running_cluster

RUN_TIMEOUT_S = 60
#: texts for the two `<PROPERTY>` cases (any text in, the same text out / the hello branch)
PROPERTY_TEXTS = (
    "",
    "hello",
    "say hello",
    "Hello",
    "héllo wörld 你好 🎉 مرحبا",
    "x" * 1500 + "hello",
)


@dataclass(frozen=True)
class MeshCase:
    id: str
    fixture: Path
    inputs: dict[str, Any]
    query: str | None
    expected_status: str
    expected_outputs: Any
    exact_outputs: bool


def _mesh_cases() -> list[MeshCase]:
    cases = [
        MeshCase(
            case.id,
            FIXTURES / case.fixture,
            case.inputs,
            case.query,
            case.expected_status,
            case.expected_outputs,
            case.exact_outputs,
        )
        for case in load_cases()
        if why_not_runnable(case) is None
    ]
    for number, text in enumerate(PROPERTY_TEXTS):
        cases.append(
            MeshCase(
                f"property-passthrough-{number}",
                FIXTURES / "simple_passthrough_workflow.yml",
                {"query": text},
                None,
                "succeeded",
                {"query": text},
                True,
            )
        )
        cases.append(
            MeshCase(
                f"property-hello-{number}",
                FIXTURES / "conditional_hello_branching_workflow.yml",
                {"query": text},
                None,
                "succeeded",
                {"true" if "hello" in text else "false": text},
                True,
            )
        )
    return cases


CASES = _mesh_cases()
#: known differences from Dify's outputs (`tests/conformance/expected_outputs.py`)
_MARKS = {case.id: case.marks for case in load_cases()}
#: embedded results per case id, shared by both backends
_embedded: dict[str, RunResult] = {}


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=BACKENDS)
async def mesh_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, RunRecord | BaseException]]:
    """Every case run through one cluster of this backend: case id -> finished run (or why
    it did not finish)."""
    backend: str = request.param
    directory = tmp_path_factory.mktemp(f"mesh-{backend}")
    async with running_cluster(backend, directory, workers=2) as cluster:
        apps = {}
        for fixture in sorted({case.fixture for case in CASES}):
            apps[fixture] = await cluster.register(fixture)
        started: dict[str, str | BaseException] = {}
        for case in CASES:
            try:
                started[case.id] = await cluster.start_run(
                    apps[case.fixture], case.inputs, query=case.query
                )
            except Exception as exc:
                started[case.id] = exc
        results: dict[str, RunRecord | BaseException] = {}
        for case_id, run_id in started.items():
            if isinstance(run_id, BaseException):
                results[case_id] = run_id
                continue
            try:
                results[case_id] = await cluster.wait(run_id, timeout_s=RUN_TIMEOUT_S)
            except AssertionError as exc:
                results[case_id] = exc
        yield results


async def embedded(case: MeshCase) -> RunResult:
    if case.id not in _embedded:
        _embedded[case.id] = await EmbeddedRunner().async_run(
            load_workflow(case.fixture), RunRequest(inputs=case.inputs, query=case.query)
        )
    return _embedded[case.id]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case.id, marks=_MARKS.get(case.id, [])) for case in CASES]
)
async def test_case(case: MeshCase, mesh_runs: dict[str, RunRecord | BaseException]) -> None:
    run = mesh_runs[case.id]
    if isinstance(run, BaseException):
        raise run
    local = await embedded(case)
    assert (run.status, run.outputs) == (local.status, local.outputs), run.error
    assert run.status == case.expected_status, run.error
    assert outputs_match(run.outputs, case.expected_outputs, exact=case.exact_outputs), (
        f"outputs {run.outputs!r} != expected {case.expected_outputs!r}"
    )


def test_enough_cases_run() -> None:
    """Guards against the selection silently shrinking (57 runnable + 12 property runs)."""
    assert len(CASES) >= 40 + 2 * len(PROPERTY_TEXTS)
