"""Dify's chatflow engine cases (`../shared/dify/fixtures/cases.jsonl`) as chat turns over
`POST /v1/chat-messages`, on the mesh: Dify's expected answer, outputs and status.

The cases that need no model, and those whose LLM nodes upstream mocks (answered here by
one `fanflow mock-llm` process, a rule per node and, where cases share a fixture, per
query). Cases the conformance suite cannot run embedded (unsupported nodes, models without
a name) are left out here too.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
    why_not_runnable,
)
from tests.conftest import AMQP_URL, require_service
from tests.llm.conftest import MockFactory, mock_llm
from tests.mesh.cluster import Cluster
from tests.trigger.conftest import StartServer, bearer

__all__ = ["mock_llm"]


def _is_chatflow(case: Case) -> bool:
    document = yaml.safe_load((FIXTURES / case.fixture).read_text(encoding="utf-8")) or {}
    return (document.get("app") or {}).get("mode") == "advanced-chat"


CHAT_CASES = [
    case
    for case in load_cases()
    if _is_chatflow(case)
    and (why_not_runnable(case) is None or needs_mock_llm(case))
    and not graph_patches(case)
    and not llm_delay_ms(case)
    and not case.difference
]


def _rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    fixtures = [case.fixture for case in CHAT_CASES if needs_mock_llm(case)]
    for case in CHAT_CASES:
        if not needs_mock_llm(case):
            continue
        shared = fixtures.count(case.fixture) > 1
        for node_id, reply in (llm_replies(case) or {}).items():
            rule = {"node": node_id, **reply}
            if shared:
                rule["contains"] = case.query or ""
            rules.append(rule)
    return rules


@pytest.fixture
async def case_mesh(tmp_path: Path, mock_llm: MockFactory) -> AsyncIterator[Cluster]:
    require_service(AMQP_URL, "RabbitMQ")
    mock = mock_llm("--mode", "echo", replies=_rules())
    cluster = await Cluster.open(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'cases.db'}",
        amqp_url=AMQP_URL,
        log_dir=tmp_path / "logs",
        namespace=f"fanflow-chatcases-{uuid.uuid4().hex[:10]}",
    )
    try:
        cluster.start_worker(FANFLOW_LLM_BASE_URL=mock.url)
        cluster.start_aggregator()
        await cluster.wait_ready()
        yield cluster
    finally:
        await cluster.close()


def test_enough_chatflow_cases() -> None:
    assert len(CHAT_CASES) >= 10, [case.id for case in CHAT_CASES]


async def test_chatflow_cases_over_chat_messages(
    start_server: StartServer, case_mesh: Cluster
) -> None:
    """All cases against one trigger and mesh (a mesh per case would cost seconds each)."""
    server = await start_server(cluster=case_mesh)
    keys: dict[str, str] = {}
    failures: list[str] = []
    for case in CHAT_CASES:
        if case.fixture not in keys:
            keys[case.fixture] = await server.import_app(FIXTURES / case.fixture)
        key = keys[case.fixture]
        body = {
            "query": case.query or "",
            "inputs": case.inputs,
            "user": "cases",
            "response_mode": "blocking",
        }
        response = await server.http.post("/v1/chat-messages", json=body, headers=bearer(key))
        if case.expected_status == "failed":
            if response.status_code != 400:
                failures.append(f"{case.id}: expected a failed turn, got {response.text}")
            continue
        if response.status_code != 200:
            failures.append(f"{case.id}: {response.status_code} {response.text}")
            continue
        answer = response.json()
        detail = await server.http.get(
            f"/v1/workflows/run/{answer['task_id']}", headers=bearer(key)
        )
        run = detail.json()
        if run["status"] != case.expected_status:
            failures.append(f"{case.id}: status {run['status']}, expected {case.expected_status}")
        if not outputs_match(run["outputs"], case.expected_outputs, exact=case.exact_outputs):
            failures.append(f"{case.id}: outputs {run['outputs']!r} != {case.expected_outputs!r}")
        expected_answer = (case.expected_outputs or {}).get("answer")
        if isinstance(expected_answer, str) and answer["answer"] != expected_answer:
            failures.append(f"{case.id}: answer {answer['answer']!r} != {expected_answer!r}")
    assert not failures, "\n".join(failures)
