"""The tool node at validate time and in a whole run: providers refused by name, custom
providers known once the process's catalog has them, and a run through `fanflow run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fanflow.dsl.load import load_workflow
from fanflow.errors import WorkflowInvalid
from fanflow.tools import catalog as catalog_module
from fanflow.tools.catalog import ToolCatalog, activate
from fanflow.tools.config import parse_tools_config

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "dify" / "fixtures"


@pytest.fixture(autouse=True)
def builtins_only() -> Iterator[None]:
    saved = catalog_module._active
    activate(ToolCatalog())
    yield
    catalog_module._active = saved


def workflow(tool: dict[str, Any]) -> str:
    nodes = [
        {"id": "start", "data": {"type": "start", "title": "Start", "variables": []}},
        {"id": "t", "data": {"type": "tool", "title": "Lookup", **tool}},
        {
            "id": "end",
            "data": {
                "type": "end",
                "title": "End",
                "outputs": [{"variable": "text", "value_selector": ["t", "text"]}],
            },
        },
    ]
    edges = [
        {"id": "a", "source": "start", "target": "t"},
        {"id": "b", "source": "t", "target": "end"},
    ]
    document = {
        "app": {"mode": "workflow", "name": "tools"},
        "kind": "app",
        "version": "0.3.0",
        "workflow": {"graph": {"nodes": nodes, "edges": edges}},
    }
    return yaml.safe_dump(document, allow_unicode=True)


def problems(tool: dict[str, Any]) -> list[str]:
    try:
        load_workflow("test", text=workflow(tool))
    except WorkflowInvalid as exc:
        return [str(p) for p in exc.problems]
    return []


def test_an_unknown_builtin_provider_is_refused_naming_provider_and_tool() -> None:
    assert problems(
        {"provider_id": "feishu_document", "provider_type": "builtin", "tool_name": "create"}
    ) == [
        "built-in tool provider 'feishu_document' (tool 'create') is not available; fanflow has "
        "firecrawl, jina, json_process, regex, searxng, tavily, time, webscraper, wikipedia "
        "at node t (Lookup)"
    ]


def test_workflow_and_mcp_tools_are_refused_by_name() -> None:
    [problem] = problems(
        {
            "provider_id": "0ad29728",
            "provider_name": "本地爬虫",
            "provider_type": "workflow",
            "tool_name": "localScrape",
        }
    )
    assert problem.startswith("tool provider '本地爬虫' (provider_type 'workflow', tool ")


def test_parameter_shapes_are_checked() -> None:
    assert problems(
        {
            "provider_id": "time",
            "tool_name": "current_time",
            "tool_parameters": {"format": {"type": "variable", "value": "start.x"}},
        }
    ) == ["tool_parameters.format.value must be a selector, got 'start.x' at node t (Lookup)"]


def test_a_variable_parameter_must_name_an_upstream_variable() -> None:
    found = problems(
        {
            "provider_id": "time",
            "tool_name": "current_time",
            "tool_parameters": {"timezone": {"type": "variable", "value": ["ghost", "tz"]}},
        }
    )
    assert len(found) == 1 and "ghost.tz" in found[0], found


def test_a_custom_provider_validates_once_configured() -> None:
    tool = {"provider_id": "uuid-1", "provider_name": "weather", "provider_type": "api"}
    tool["tool_name"] = "forecast"
    [refused] = problems(tool)
    assert "custom (OpenAPI) tool provider 'uuid-1' (tool 'forecast') is not available" in refused
    document = {
        "openapi": "3.0.0",
        "servers": [{"url": "https://weather.example"}],
        "paths": {"/f": {"get": {"operationId": "forecast"}}},
    }
    activate(
        ToolCatalog.from_config(parse_tools_config({"openapi": {"weather": {"schema": document}}}))
    )
    assert problems(tool) == []


def test_fanflow_run_of_difys_time_tool_fixture(tmp_path: Path) -> None:
    """The CLI runs a chatflow whose tool node is time's current_time."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fanflow_services.cli",
            "run",
            str(FIXTURES / "chatflow_time_tool_static_output_workflow.yml"),
            "--query",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded"
    assert result["outputs"]["answer"] == "hello, dify!"


def test_fanflow_validate_reads_custom_providers_from_the_tools_file(tmp_path: Path) -> None:
    document = {
        "openapi": "3.0.0",
        "servers": [{"url": "https://weather.example"}],
        "paths": {"/f": {"get": {"operationId": "forecast"}}},
    }
    tools = tmp_path / "tools.yml"
    tools.write_text(yaml.safe_dump({"openapi": {"weather": {"schema": document}}}))
    path = tmp_path / "wf.yml"
    path.write_text(
        workflow({"provider_name": "weather", "provider_type": "api", "tool_name": "forecast"})
    )

    def validate(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fanflow_services.cli", "validate", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )

    refused = validate()
    assert refused.returncode == 2
    assert "custom (OpenAPI) tool provider 'weather' (tool 'forecast') is not available" in (
        refused.stderr
    )
    assert validate(FANFLOW_TOOLS_FILE=str(tools)).returncode == 0
    broken = validate(FANFLOW_TOOLS_FILE=str(tmp_path / "missing.yml"))
    assert broken.returncode == 2 and "cannot read the tools file" in broken.stderr
