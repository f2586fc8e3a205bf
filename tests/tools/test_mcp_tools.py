"""MCP tools against a local MCP server (streamable HTTP) built with the same `mcp` SDK."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer

from fanflow.executors import ExecutionContext
from fanflow.resilience.upstreams import Upstreams
from tests.tools.conftest import catalog, run_tool, tool_task

SEEN_HEADERS: list[str | None] = []


def _server() -> MCPServer:
    server = MCPServer("calc")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def shout(text: str) -> str:
        """The text in capitals."""
        return text.upper()

    @server.tool()
    def explode() -> str:
        """Always fails."""
        raise ValueError("no such luck")

    return server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    port = _free_port()
    app = _server().streamable_http_app()

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            raw = headers.get(b"authorization")
            SEEN_HEADERS.append(raw.decode() if raw else None)
        await app(scope, receive, send)

    server = uvicorn.Server(
        uvicorn.Config(recording, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the MCP server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(10)


def context(url: str) -> ExecutionContext:
    config = {"mcp": {"calc": {"url": url, "api_key": "mcp-key", "id": "srv-1"}}}
    return ExecutionContext(upstreams=Upstreams(), tools=catalog(config))


async def test_a_tool_call_with_text_and_structured_content(mcp_url: str) -> None:
    SEEN_HEADERS.clear()
    result = await run_tool(
        tool_task(
            "calc",
            "add",
            {"a": {"type": "variable", "value": ["start", "a"]}, "b": 3},
            provider_type="mcp",
            variables={"start.a": 2},
        ),
        context(mcp_url),
    )
    assert result.status == "succeeded", result.error
    assert result.outputs["text"] == "5"
    assert result.outputs["json"] == [{"result": 5}]
    assert SEEN_HEADERS and set(SEEN_HEADERS) == {"Bearer mcp-key"}


async def test_the_provider_id_finds_the_server(mcp_url: str) -> None:
    task = tool_task("srv-1", "shout", {"text": "hi"}, provider_type="mcp")
    task.data["provider_name"] = "Calculator"  # a display name; the id matches
    result = await run_tool(task, context(mcp_url))
    assert result.outputs["text"] == "HI"


async def test_a_tool_error_fails_the_node_with_its_text(mcp_url: str) -> None:
    result = await run_tool(tool_task("calc", "explode", provider_type="mcp"), context(mcp_url))
    assert result.status == "failed"
    assert "MCP tool 'explode' on calc failed" in (result.error or "")
    assert "Error executing tool explode" in (result.error or "")  # the server hides its exception


async def test_a_server_that_is_down_is_a_connect_failure() -> None:
    result = await run_tool(
        tool_task("calc", "add", {"a": 1, "b": 2}, provider_type="mcp"),
        context(f"http://127.0.0.1:{_free_port()}/mcp"),
    )
    assert (result.status, result.reason, result.retryable) == ("failed", "connect", True)
    assert "MCP server calc" in (result.error or "")


async def test_an_unconfigured_server_is_refused_by_name() -> None:
    result = await run_tool(
        tool_task("docs", "search", provider_type="mcp"), ExecutionContext(tools=catalog({}))
    )
    assert (result.status, result.error_type) == ("failed", "NotSupportedError")
    assert "MCP server 'docs' (tool 'search') is not configured" in (result.error or "")
