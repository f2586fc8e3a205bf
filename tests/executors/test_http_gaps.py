"""Gaps real exports hit: disabled vision/context settings at validate time, and form-data
file items whose file input is empty, through a whole run."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from fanflow.dsl.load import load_workflow
from fanflow.errors import WorkflowInvalid
from fanflow.executors import ExecutionContext
from fanflow.runner import EmbeddedRunner
from fanflow.runtime import RunRequest
from fanflow.scheduler import Limits
from tests.tools.fakes import FakeService, Reply, fake_service


@pytest.fixture
def service() -> Iterator[FakeService]:
    with fake_service() as server:
        yield server


def document(nodes: list[dict[str, Any]], chain: list[str]) -> str:
    edges = [{"id": f"{a}-{b}", "source": a, "target": b} for a, b in itertools.pairwise(chain)]
    return yaml.safe_dump(
        {
            "app": {"mode": "workflow", "name": "gaps"},
            "kind": "app",
            "version": "0.3.0",
            "workflow": {"graph": {"nodes": nodes, "edges": edges}},
        },
        allow_unicode=True,
    )


START = {
    "id": "start",
    "data": {
        "type": "start",
        "title": "Start",
        "variables": [
            {"variable": "doc", "type": "file", "required": False, "label": "doc"},
        ],
    },
}


def llm(*, vision: bool, context: bool) -> dict[str, Any]:
    return {
        "id": "llm",
        "data": {
            "type": "llm",
            "title": "Ask",
            "model": {"provider": "openai", "name": "gpt-4o", "mode": "chat"},
            "prompt_template": [{"role": "user", "text": "hi"}],
            # both point at a node that was deleted from the graph
            "context": {"enabled": context, "variable_selector": ["deleted", "result"]},
            "vision": {
                "enabled": vision,
                "configs": {"detail": "high", "variable_selector": ["deleted", "files"]},
            },
        },
    }


def end(selector: list[str]) -> dict[str, Any]:
    return {
        "id": "end",
        "data": {
            "type": "end",
            "title": "End",
            "outputs": [{"variable": "out", "value_selector": selector}],
        },
    }


def test_disabled_vision_and_context_are_not_references() -> None:
    text = document(
        [START, llm(vision=False, context=False), end(["llm", "text"])], ["start", "llm", "end"]
    )
    load_workflow("disabled", text=text)


@pytest.mark.parametrize(("vision", "context"), [(True, False), (False, True)])
def test_an_enabled_setting_naming_a_deleted_node_is_refused(vision: bool, context: bool) -> None:
    text = document(
        [START, llm(vision=vision, context=context), end(["llm", "text"])], ["start", "llm", "end"]
    )
    with pytest.raises(WorkflowInvalid) as raised:
        load_workflow("enabled", text=text)
    assert any("deleted" in str(problem) for problem in raised.value.problems)


def http(url: str) -> dict[str, Any]:
    return {
        "id": "http",
        "data": {
            "type": "http-request",
            "title": "Upload",
            "method": "post",
            "url": url,
            "authorization": {"type": "no-auth"},
            "headers": "",
            "params": "",
            "body": {
                "type": "form-data",
                "data": [
                    {"type": "text", "key": "note", "value": "hello"},
                    {"type": "file", "key": "upload", "file": ["start", "doc"]},
                ],
            },
        },
    }


async def test_a_form_data_file_item_with_no_file_is_left_out(service: FakeService) -> None:
    service.route("POST", "/upload", Reply(body={"ok": True}))
    workflow = load_workflow(
        "upload",
        text=document(
            [START, http(f"{service.url}/upload"), end(["http", "status_code"])],
            ["start", "http", "end"],
        ),
    )
    runner = EmbeddedRunner(
        limits=Limits(max_run_seconds=30), context=ExecutionContext(allow_private_networks=True)
    )
    result = await runner.async_run(workflow, RunRequest(inputs={}))
    assert (result.status, result.error) == ("succeeded", None)
    assert result.outputs == {"out": 200}
    [seen] = service.seen
    assert b'name="note"' in seen.body and b"upload" not in seen.body
    # a file that is there is not dropped silently: the node says files are not supported yet
    file = {"type": "document", "transfer_method": "remote_url", "url": "https://x.example/a.pdf"}
    result = await runner.async_run(workflow, RunRequest(inputs={"doc": file}))
    assert result.status == "failed"
    assert "form-data file items are not supported yet" in (result.error or "")
    assert len(service.seen) == 1
