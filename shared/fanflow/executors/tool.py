"""The `tool` node: one call of a tool from the process's catalog (`fanflow.tools`).

The node's `tool_parameters` and `tool_configurations` are resolved against the task's
variables and typed by the tool's schema; network tools send through `fanflow.tools.http`
(SSRF guard, pooled connections, breakers, rate limits, retries, metrics as every external
call). Outputs are Dify's: `text`, `files`, `json` (``[{"data": []}]`` when the tool gave no
JSON) and any variables the tool set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fanflow.context import ExecutionContext, ExecutionOutcome, node_label
from fanflow.errors import NodeError
from fanflow.http_pool import HttpPool
from fanflow.messages import NodeTask
from fanflow.tools.base import ToolCall
from fanflow.tools.catalog import ToolCatalog, ToolNotFound, active_catalog
from fanflow.tools.http import ToolHttp
from fanflow.tools.node import resolve_tool_inputs

__all__ = ["run_tool_node"]


def catalog_of(context: ExecutionContext) -> ToolCatalog:
    tools = getattr(context, "tools", None)
    return tools if isinstance(tools, ToolCatalog) else active_catalog()


async def run_tool_node(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
    label = node_label(task)
    data = task.data
    try:
        provider, tool = catalog_of(context).find(
            str(data.get("provider_type") or "builtin"),
            str(data.get("provider_id") or ""),
            str(data.get("provider_name") or ""),
            str(data.get("tool_name") or ""),
        )
    except ToolNotFound as exc:
        raise NodeError(f"{label}: {exc}", error_type="NotSupportedError") from exc
    params = resolve_tool_inputs(data, tool, task.lookup, label)
    async with _pool(context) as pool:
        http = ToolHttp(
            pool=pool,
            upstreams=context.upstreams,
            provider=provider.name,
            label=label,
            allow_private_networks=context.allow_private_networks,
            allow_list=context.http_allow_list,
            trusted_hosts=provider.config.trusted_hosts(),
        )
        call = ToolCall(label=label, provider=provider.name, config=provider.config, http=http)
        result = await tool.invoke(params, call)
    return ExecutionOutcome(outputs=result.outputs())


@asynccontextmanager
async def _pool(context: ExecutionContext) -> AsyncIterator[HttpPool]:
    """The process's pool; one for this call alone when the context has none (tests)."""
    if context.http_pool is not None:
        yield context.http_pool
        return
    async with HttpPool() as pool:
        yield pool
