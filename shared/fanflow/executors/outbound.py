"""What an executor sends HTTP through: the context's pool and a `ToolHttp` built from it.

The `tool`, `agent`, `knowledge-retrieval`, `document-extractor` and `http-request` nodes
all send through the process's pool; each tool-style call gets the context's SSRF settings
(private networks, the allow list) and its upstreams.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fanflow.context import ExecutionContext
from fanflow.http_pool import HttpPool
from fanflow.tools.http import ToolHttp

__all__ = ["context_pool", "tool_http"]


@asynccontextmanager
async def context_pool(context: ExecutionContext) -> AsyncIterator[HttpPool]:
    """The process's pool; one for this call alone when the context has none (tests)."""
    if context.http_pool is not None:
        yield context.http_pool
        return
    async with HttpPool() as pool:
        yield pool


def tool_http(
    context: ExecutionContext,
    pool: HttpPool,
    *,
    provider: str,
    label: str,
    trusted_hosts: tuple[str, ...] = (),
) -> ToolHttp:
    """`ToolHttp` for one call of `provider` by the node `label`, under the context's SSRF
    settings; `trusted_hosts` (the provider's own API) pass the guard."""
    return ToolHttp(
        pool=pool,
        upstreams=context.upstreams,
        provider=provider,
        label=label,
        allow_private_networks=context.allow_private_networks,
        allow_list=context.http_allow_list,
        trusted_hosts=trusted_hosts,
    )
