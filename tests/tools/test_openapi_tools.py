"""Custom tools from an OpenAPI document in the tools file (Dify's `provider_type: api`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fanflow.executors import ExecutionContext
from fanflow.resilience.upstreams import Upstreams
from fanflow.tools.config import ToolsConfigInvalid, load_tools_file
from tests.tools.conftest import catalog, run_tool, tool_task
from tests.tools.fakes import FakeService, Reply, Seen


def document(server: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.0",
        "info": {"title": "Weather", "version": "1"},
        "servers": [{"url": server}],
        "paths": {
            "/cities/{city}/forecast": {
                "parameters": [
                    {"name": "city", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "get": {
                    "operationId": "forecast",
                    "parameters": [
                        {
                            "name": "days",
                            "in": "query",
                            "schema": {"type": "integer", "default": 3},
                        },
                        {"$ref": "#/components/parameters/Units"},
                        {"name": "X-Trace", "in": "header", "schema": {"type": "string"}},
                    ],
                },
            },
            "/reports": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Report"}}
                        }
                    }
                }
            },
        },
        "components": {
            "parameters": {
                "Units": {
                    "name": "units",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["metric", "imperial"]},
                }
            },
            "schemas": {
                "Report": {
                    "type": "object",
                    "required": ["city"],
                    "properties": {"city": {"type": "string"}, "rain": {"type": "number"}},
                }
            },
        },
    }


def _answer(seen: Seen) -> Reply:
    return Reply(body={"path": seen.path, "query": seen.query, "body": seen.body.decode()})


def context(service: FakeService, auth: dict[str, Any] | None = None) -> ExecutionContext:
    config = {
        "openapi": {
            "weather": {
                "schema": document(service.url),
                "id": "2ebe9c1d-0000",
                "auth": auth or {"type": "header", "name": "X-Api-Key", "api_key": "secret"},
            }
        }
    }
    return ExecutionContext(upstreams=Upstreams(), tools=catalog(config))


async def test_an_operation_with_path_query_and_header_parameters(service: FakeService) -> None:
    service.route("GET", "/cities/Paris 1/forecast", _answer)
    result = await run_tool(
        tool_task(
            "weather",
            "forecast",
            {
                "city": {"type": "variable", "value": ["start", "city"]},
                "units": "metric",
                "X-Trace": "t-1",
            },
            provider_type="api",
            variables={"start.city": "Paris 1"},
        ),
        context(service),
    )
    assert result.status == "succeeded", result.error
    [seen] = service.seen
    assert seen.query == {"days": "3", "units": "metric"}
    assert seen.headers["x-trace"] == "t-1"
    assert seen.headers["x-api-key"] == "secret"  # from the tools file, not the DSL
    assert result.outputs["json"] == [
        {"path": "/cities/Paris 1/forecast", "query": {"days": "3", "units": "metric"}, "body": ""}
    ]
    assert '"path": "/cities/Paris 1/forecast"' in result.outputs["text"]


async def test_a_json_body_operation_named_by_method_and_path(service: FakeService) -> None:
    service.route("POST", "/reports", _answer)
    result = await run_tool(
        tool_task(
            "2ebe9c1d-0000",  # Dify's provider id also finds it
            "post_reports",
            {"city": "Oslo", "rain": "2.5"},
            provider_type="api",
        ),
        context(service, auth={"type": "bearer", "api_key": "tok"}),
    )
    assert result.status == "succeeded", result.error
    [seen] = service.seen
    assert seen.json() == {"city": "Oslo", "rain": 2.5}
    assert seen.headers["authorization"] == "Bearer tok"


async def test_an_enum_parameter_outside_its_values_is_refused(service: FakeService) -> None:
    result = await run_tool(
        tool_task("weather", "forecast", {"city": "x", "units": "kelvin"}, provider_type="api"),
        context(service),
    )
    assert result.status == "failed"
    assert "'units' must be one of metric, imperial, got 'kelvin'" in (result.error or "")
    assert service.seen == []


async def test_an_unconfigured_custom_provider_is_refused_by_name() -> None:
    result = await run_tool(
        tool_task("nowhere", "op", provider_type="api"), ExecutionContext(tools=catalog({}))
    )
    assert result.status == "failed"
    assert result.error_type == "NotSupportedError"
    assert "custom (OpenAPI) tool provider 'nowhere' (tool 'op') is not available" in (
        result.error or ""
    )


def test_the_tools_file_reads_documents_and_keys_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "weather.yaml").write_text(yaml.safe_dump(document("https://w.example")))
    path = tmp_path / "tools.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "providers": {"tavily": {"api_key_env": "TAVILY_KEY"}},
                "openapi": {
                    "weather": {
                        "document": "weather.yaml",
                        "auth": {"type": "query", "name": "key", "api_key_env": "W_KEY"},
                    }
                },
            }
        )
    )
    config = load_tools_file(path, environ={"TAVILY_KEY": "t", "W_KEY": "w"})
    assert config.provider("tavily").api_key == "t"
    assert config.openapi["weather"].api_key == "w"
    with pytest.raises(ToolsConfigInvalid, match="environment variable W_KEY is not set"):
        load_tools_file(path, environ={"TAVILY_KEY": "t"})
    path.write_text(yaml.safe_dump({"providers": {"jina": {"token": "x"}}}))
    with pytest.raises(ToolsConfigInvalid, match=r"providers.jina: unknown key\(s\) \['token'\]"):
        load_tools_file(path)
