"""knowledge-retrieval against local servers of Dify's External Knowledge API contract."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from fanflow.dsl.load import load_workflow
from fanflow.errors import WorkflowInvalid
from fanflow.executors import ExecutionContext, execute_task
from fanflow.llm.prompts import context_text
from fanflow.messages import NodeTask, TaskResult
from fanflow.resilience.upstreams import Upstreams
from fanflow.tools import catalog as catalog_module
from fanflow.tools.catalog import ToolCatalog, activate
from tests.tools.conftest import catalog
from tests.tools.fakes import FakeService, Reply, Seen, fake_service


@pytest.fixture
def service() -> Iterator[FakeService]:
    with fake_service() as server:
        yield server


@pytest.fixture(autouse=True)
def restore_catalog() -> Iterator[None]:
    saved = catalog_module._active
    yield
    catalog_module._active = saved


RECORDS = {
    "handbook": [
        {"content": "Leave is 25 days.", "score": 0.9, "title": "leave.md", "metadata": {"p": 1}},
        {"content": "Weak match.", "score": 0.2, "title": "misc.md"},
    ],
    "wiki": [{"content": "Holidays follow the calendar.", "score": 0.7, "title": "hol.md"}],
}


def _retrieval(seen: Seen) -> Reply:
    body = seen.json()
    if seen.headers.get("authorization") != f"Bearer key-{body['knowledge_id']}":
        return Reply(403, {"error_code": 1002, "error_msg": "Authorization failed"})
    return Reply(body={"records": RECORDS[body["knowledge_id"]]})


def context(service: FakeService) -> ExecutionContext:
    datasets = {
        f"ds-{kid}": {
            "endpoint": f"{service.url}/{kid}",
            "knowledge_id": kid,
            "api_key": f"key-{kid}",
            "name": kid.title(),
        }
        for kid in RECORDS
    }
    return ExecutionContext(upstreams=Upstreams(), tools=catalog({"datasets": datasets}))


def task(dataset_ids: list[str], **data: Any) -> NodeTask:
    return NodeTask(
        task_id="r/-/kr/0",
        run_id="r",
        node_id="kr",
        node_type="knowledge-retrieval",
        node_title="Search",
        data={
            "query_variable_selector": ["start", "q"],
            "dataset_ids": dataset_ids,
            "retrieval_mode": "multiple",
            "multiple_retrieval_config": {"top_k": 2, "score_threshold": 0.5},
            **data,
        },
        variables={"start.q": "how many days of leave?"},
    )


async def test_datasets_are_merged_by_score_threshold_and_top_k(service: FakeService) -> None:
    for kid in RECORDS:
        service.route("POST", f"/{kid}/retrieval", _retrieval)
    result: TaskResult = await execute_task(task(["ds-handbook", "ds-wiki"]), context(service))
    assert result.status == "succeeded", result.error
    assert [seen.json() for seen in service.seen] == [
        {
            "knowledge_id": kid,
            "query": "how many days of leave?",
            "retrieval_setting": {"top_k": 2, "score_threshold": 0.5},
        }
        for kid in RECORDS
    ]
    records = result.outputs["result"]
    assert [(r["title"], r["metadata"]["score"], r["metadata"]["position"]) for r in records] == [
        ("leave.md", 0.9, 1),
        ("hol.md", 0.7, 2),
    ]
    first = records[0]
    assert first["content"] == "Leave is 25 days."
    assert first["metadata"]["_source"] == "knowledge"
    assert first["metadata"]["dataset_id"] == "ds-handbook"
    assert first["metadata"]["dataset_name"] == "Handbook"
    assert first["metadata"]["doc_metadata"] == {"p": 1}
    # what an LLM node's context reads
    assert context_text(
        {"enabled": True, "variable_selector": ["kr", "result"]},
        lambda _selector: records,
        label="llm",
    ) == ("Leave is 25 days.\nHolidays follow the calendar.")


async def test_an_authorization_failure_and_a_malformed_answer(service: FakeService) -> None:
    service.route("POST", "/handbook/retrieval", Reply(403, {"error_code": 1002}))
    result = await execute_task(task(["ds-handbook"]), context(service))
    assert (result.status, result.reason) == ("failed", "status_4xx")
    service.route("POST", "/handbook/retrieval", Reply(body={"items": []}))
    result = await execute_task(task(["ds-handbook"]), context(service))
    assert (result.status, result.reason) == ("failed", "format")
    assert "no `records` list" in (result.error or "")


async def test_single_mode_over_several_datasets_is_refused(service: FakeService) -> None:
    result = await execute_task(
        task(["ds-handbook", "ds-wiki"], retrieval_mode="single"), context(service)
    )
    assert (result.status, result.error_type) == ("failed", "NotSupportedError")
    assert "model router" in (result.error or "")


def test_an_unconfigured_dataset_is_refused_at_validate() -> None:
    activate(ToolCatalog())
    nodes = [
        {
            "id": "start",
            "data": {
                "type": "start",
                "title": "S",
                "variables": [{"variable": "q", "type": "text-input", "label": "q"}],
            },
        },
        {
            "id": "kr",
            "data": {
                "type": "knowledge-retrieval",
                "title": "KB",
                "query_variable_selector": ["start", "q"],
                "dataset_ids": ["6f1c-uuid"],
                "retrieval_mode": "multiple",
            },
        },
        {
            "id": "end",
            "data": {
                "type": "end",
                "title": "E",
                "outputs": [{"variable": "r", "value_selector": ["kr", "result"]}],
            },
        },
    ]
    edges = [
        {"id": "a", "source": "start", "target": "kr"},
        {"id": "b", "source": "kr", "target": "end"},
    ]
    text = yaml.safe_dump(
        {
            "app": {"mode": "workflow", "name": "kb"},
            "kind": "app",
            "version": "0.3.0",
            "workflow": {"graph": {"nodes": nodes, "edges": edges}},
        }
    )
    with pytest.raises(WorkflowInvalid) as raised:
        load_workflow("kb", text=text)
    [problem] = raised.value.problems
    assert "dataset '6f1c-uuid' is not configured: give datasets.6f1c-uuid" in str(problem)
    activate(
        catalog(
            {"datasets": {"6f1c-uuid": {"endpoint": "https://kb.example", "knowledge_id": "k"}}}
        )
    )
    load_workflow("kb", text=text)
