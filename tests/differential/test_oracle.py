"""Differential tests: each case runs in fanflow's embedded runner and in Dify's own engine.

Status and outputs must be equal (Python `==`, so 1 == 1.0); where Dify reports an error,
fanflow must fail too. Error texts are not compared: they are worded differently on purpose.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from fanflow.dsl.load import load_workflow
from fanflow.errors import InputsInvalid, WorkflowInvalid
from fanflow.runner import EmbeddedRunner
from fanflow.runtime import RunRequest
from tests.conftest import OracleRun
from tests.differential.cases import CASES, Case

#: graphon's stand-in code executor raises `SandboxCodeExecutionError`; Dify's API raises
#: `CodeExecutionError` (core.helper.code_executor), which fanflow reports as `error_type`
_ORACLE_ONLY_NAMES = {"SandboxCodeExecutionError": "CodeExecutionError"}


def _as_deployed(value: Any) -> Any:
    if isinstance(value, str):
        for oracle_name, deployed_name in _ORACLE_ONLY_NAMES.items():
            value = value.replace(oracle_name, deployed_name)
        return value
    if isinstance(value, list):
        return [_as_deployed(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_deployed(item) for key, item in value.items()}
    return value


def run_fanflow(case: Case) -> dict[str, Any]:
    """fanflow's result shaped like the oracle's: `invalid` when the run never started."""
    try:
        workflow = load_workflow(case.path)
        result = EmbeddedRunner().run(workflow, RunRequest(inputs=case.inputs, query=case.query))
    except (WorkflowInvalid, InputsInvalid) as exc:
        return {"status": "invalid", "outputs": {}, "error": str(exc)}
    # the API returns outputs as JSON; the oracle's come through graphon's JSON encoder
    outputs = json.loads(json.dumps(result.outputs))
    return {"status": result.status, "outputs": outputs, "error": result.error}


def run_dify(oracle: OracleRun, case: Case) -> dict[str, Any]:
    args = ("--query", case.query) if case.query is not None else ()
    result = oracle(case.path, case.inputs, *args)
    result["outputs"] = _as_deployed(result.get("outputs") or {})
    return result


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_same_as_dify(case: Case, oracle: OracleRun) -> None:
    dify = run_dify(oracle, case)
    ours = run_fanflow(case)
    where = f"{case.path.name} inputs={case.inputs!r} query={case.query!r}"
    assert dify["status"] not in ("unsupported",), f"{where}: the oracle refused the file: {dify}"
    assert ours["status"] == dify["status"], (
        f"{where}: status {ours['status']!r} != Dify's {dify['status']!r}\n"
        f"  fanflow: {ours}\n  dify:    {dify}"
    )
    assert ours["outputs"] == dify["outputs"], (
        f"{where}: outputs differ\n  fanflow: {ours['outputs']!r}\n  dify:    {dify['outputs']!r}"
    )
    if dify.get("error"):
        assert ours["error"], f"{where}: Dify failed with {dify['error']!r}, fanflow did not"
