"""MCP tools (`provider_type: mcp`): a tool on an MCP server over streamable HTTP, with the
official `mcp` SDK.

Servers are configured under `mcp:` in the tools file (``{url, api_key_env, headers,
id}``), by the name the DSL gives as `provider_name` (or by Dify's `provider_id`). The
server's tools are not listed offline, so validation checks the server is configured and
the tool's name at run time: the node's resolved parameters go to ``tools/call`` as its
arguments. The answer's text contents make `text`, its structured content a JSON message;
an answer flagged as an error fails the node with its text. Each call (a session: initialize
then call) goes through `Upstreams.call` as upstream `tool:mcp:<name>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fanflow.resilience.upstreams import UpstreamFailure
from fanflow.tools.base import Tool, ToolCall, ToolError, ToolResult

__all__ = ["McpServerConfig", "mcp_tool"]

CALL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class McpServerConfig:
    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    provider_id: str | None = None


def mcp_tool(server: McpServerConfig, tool_name: str) -> Tool:
    """A tool that calls `tool_name` on `server` (its schema is the server's own)."""

    async def invoke(params: dict[str, Any], call: ToolCall) -> ToolResult:
        arguments = {k: v for k, v in params.items() if v is not None}

        async def attempt() -> Any:
            return await _call(server, tool_name, arguments, call.label)

        upstreams = call.http.upstreams
        if upstreams is None:
            answer = await attempt()
        else:
            answer = await upstreams.call(f"tool:mcp:{server.name}", attempt, kind="tool")
        return _result(answer, server, tool_name, call.label)

    return Tool(tool_name, f"{tool_name} on MCP server {server.name}", (), invoke)


async def _call(server: McpServerConfig, tool: str, arguments: dict[str, Any], label: str) -> Any:
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    where = f"{label}: MCP server {server.name} ({server.url})"
    # the server's URL is the operator's (the tools file): no redirects, no proxy from the env
    client = httpx2.AsyncClient(
        headers=dict(server.headers),
        timeout=httpx2.Timeout(CALL_TIMEOUT_S, connect=10.0),
        follow_redirects=False,
        trust_env=False,
    )
    try:
        async with (
            client,
            streamable_http_client(server.url, http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await session.call_tool(tool, arguments)
    except UpstreamFailure:
        raise
    except (httpx2.ConnectError, httpx2.ConnectTimeout, ConnectionError, OSError) as exc:
        raise UpstreamFailure(
            f"{where}: cannot connect: {exc}",
            reason="connect",
            retryable=True,
            error_type="ToolInvokeError",
        ) from exc
    except httpx2.TimeoutException as exc:
        raise UpstreamFailure(
            f"{where}: timed out", reason="timeout", retryable=True, error_type="ToolInvokeError"
        ) from exc
    except Exception as exc:  # the SDK wraps transport and protocol errors in groups
        text = _first_cause(exc)
        reason = "connect" if "connect" in text.lower() else "format"
        raise UpstreamFailure(
            f"{where}: {text}",
            reason=reason,
            retryable=reason == "connect",
            error_type="ToolInvokeError",
        ) from exc


def _first_cause(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _result(answer: Any, server: McpServerConfig, tool: str, label: str) -> ToolResult:
    texts = [
        str(getattr(item, "text", ""))
        for item in getattr(answer, "content", None) or []
        if getattr(item, "type", None) == "text"
    ]
    if getattr(answer, "is_error", False):
        raise ToolError(
            f"{label}: MCP tool {tool!r} on {server.name} failed: {' '.join(texts)[:500]}"
        )
    result = ToolResult().add_text("".join(texts))
    structured = getattr(answer, "structured_content", None)
    if structured is not None:
        result.add_json(structured)
    return result
