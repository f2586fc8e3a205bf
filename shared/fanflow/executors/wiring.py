"""Building the `ExecutionContext` of a process from its settings (worker and `fanflow run`)."""

from __future__ import annotations

from fanflow.executors.base import ExecutionContext
from fanflow.http_pool import DEFAULT_MAX_CONNECTIONS, HttpPool
from fanflow.llm.providers import Providers
from fanflow.resilience.upstreams import Upstreams
from fanflow.settings import Settings


def context_from_settings(
    settings: Settings, *, http_pool: HttpPool | None = None
) -> ExecutionContext:
    """One context per process: its breakers and rate limits live as long as it does."""
    return ExecutionContext(
        code_timeout_s=settings.code_timeout_s,
        code_memory_mb=settings.code_memory_mb,
        upstreams=Upstreams.from_settings(settings),
        http_pool=http_pool,
        llm_providers=Providers.from_settings(settings),
        allow_private_networks=settings.http_allow_private_networks,
        http_allow_list=tuple(settings.http_allow_list),
    )


def http_pool_from_settings(settings: Settings, *, concurrency: int | None = None) -> HttpPool:
    """The process's pool: `http_max_connections` per host, else `concurrency` (the tasks
    the process runs at once), else `DEFAULT_MAX_CONNECTIONS`. The caller closes it."""
    size = settings.http_max_connections or concurrency or DEFAULT_MAX_CONNECTIONS
    return HttpPool(max_connections=size, keepalive_expiry_s=settings.http_keepalive_expiry_s)
