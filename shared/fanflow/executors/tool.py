"""The `tool` node: one call of a tool from the process's catalog (`fanflow.tools`).

The node's `tool_parameters` and `tool_configurations` are resolved against the task's
variables and typed by the tool's schema; network tools send through `fanflow.tools.http`
(SSRF guard, pooled connections, breakers, rate limits, retries, metrics as every external
call). Outputs are Dify's: `text`, `files`, `json` (``[{"data": []}]`` when the tool gave no
JSON) and any variables the tool set.
"""

from __future__ import annotations

from fanflow.context import ExecutionContext, ExecutionOutcome, node_label
from fanflow.errors import NodeError
from fanflow.executors.outbound import context_pool, tool_http
from fanflow.messages import NodeTask
from fanflow.tools.base import Tool, ToolCall
from fanflow.tools.catalog import Provider, ToolCatalog, ToolNotFound, active_catalog
from fanflow.tools.node import resolve_tool_inputs

__all__ = ["run_tool_node"]


def catalog_of(context: ExecutionContext) -> ToolCatalog:
    tools = getattr(context, "tools", None)
    return tools if isinstance(tools, ToolCatalog) else active_catalog()


def find_tool(
    catalog: ToolCatalog,
    label: str,
    *,
    kind: object,
    provider_id: object,
    provider_name: object,
    tool_name: object,
) -> tuple[Provider, Tool]:
    """The provider and tool a node names (`kind` empty: builtin); NotSupportedError naming
    the node when the catalog has no such tool."""
    try:
        return catalog.find(
            str(kind or "builtin"),
            str(provider_id or ""),
            str(provider_name or ""),
            str(tool_name or ""),
        )
    except ToolNotFound as exc:
        raise NodeError(f"{label}: {exc}", error_type="NotSupportedError") from exc


async def run_tool_node(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
    label = node_label(task)
    data = task.data
    provider, tool = find_tool(
        catalog_of(context),
        label,
        kind=data.get("provider_type"),
        provider_id=data.get("provider_id"),
        provider_name=data.get("provider_name"),
        tool_name=data.get("tool_name"),
    )
    params = resolve_tool_inputs(data, tool, task.lookup, label)
    async with context_pool(context) as pool:
        http = tool_http(
            context,
            pool,
            provider=provider.name,
            label=label,
            trusted_hosts=provider.config.trusted_hosts(),
        )
        call = ToolCall(label=label, provider=provider.name, config=provider.config, http=http)
        result = await tool.invoke(params, call)
    return ExecutionOutcome(outputs=result.outputs())
