"""Building the `ExecutionContext` of a process from its settings (worker and `fanflow run`)."""

from __future__ import annotations

import os

from fanflow.context import ExecutionContext
from fanflow.http_pool import DEFAULT_MAX_CONNECTIONS, HttpPool
from fanflow.llm.cache import MemoryCache, RedisCache
from fanflow.llm.costs import CostAccounting, MemoryLedger, Prices, RedisLedger
from fanflow.llm.providers import Providers
from fanflow.nodes.outputs import CodeLimits
from fanflow.resilience.upstreams import Upstreams
from fanflow.sandbox.pool import SandboxPool
from fanflow.settings import Settings
from fanflow.tools.catalog import ToolCatalog, activate, catalog_from_settings


def context_from_settings(
    settings: Settings, *, http_pool: HttpPool | None = None
) -> ExecutionContext:
    """One context per process: its breakers, rate limits and LLM cache live as long as it
    does (shared by the fleet in Redis when `FANFLOW_REDIS_URL` is set)."""
    upstreams = Upstreams.from_settings(settings)
    fleet = upstreams.fleet
    return ExecutionContext(
        code_timeout_s=settings.code_timeout_s,
        code_memory_mb=settings.code_memory_mb,
        code_cpu_s=settings.code_cpu_s,
        code_limits=code_limits_from_settings(settings),
        upstreams=upstreams,
        llm_cache=RedisCache(fleet.redis) if fleet is not None else MemoryCache(),
        llm_costs=CostAccounting(
            prices=Prices.load(settings.llm_prices_file) if settings.llm_prices_file else Prices(),
            ledger=RedisLedger(fleet.redis) if fleet is not None else MemoryLedger(),
            run_budget=settings.llm_run_budget,
        ),
        http_pool=http_pool,
        llm_providers=Providers.from_settings(settings),
        allow_private_networks=settings.http_allow_private_networks,
        http_allow_list=tuple(settings.http_allow_list),
        tools=tools_from_settings(settings),
    )


def tools_from_settings(settings: Settings) -> ToolCatalog:
    """The process's tool providers (`FANFLOW_TOOLS_FILE`), also the ones validation knows."""
    catalog = catalog_from_settings(settings)
    activate(catalog)
    return catalog


def http_pool_from_settings(settings: Settings, *, concurrency: int | None = None) -> HttpPool:
    """The process's pool: `http_max_connections` per host, else `concurrency` (the tasks
    the process runs at once), else `DEFAULT_MAX_CONNECTIONS`. The caller closes it."""
    size = settings.http_max_connections or concurrency or DEFAULT_MAX_CONNECTIONS
    return HttpPool(max_connections=size, keepalive_expiry_s=settings.http_keepalive_expiry_s)


def code_limits_from_settings(settings: Settings) -> CodeLimits:
    """The code node's output limits (`FANFLOW_CODE_MAX_*`, or Dify's `CODE_MAX_*`)."""
    return CodeLimits(
        max_string_length=settings.code_max_string_length,
        max_number=settings.code_max_number,
        min_number=settings.code_min_number,
        max_precision=settings.code_max_precision,
        max_depth=settings.code_max_depth,
        max_number_array_length=settings.code_max_number_array_length,
        max_string_array_length=settings.code_max_string_array_length,
        max_object_array_length=settings.code_max_object_array_length,
    )


def sandbox_from_settings(settings: Settings, *, size: int | None = None) -> SandboxPool:
    """The process's warm code sandbox; the caller owns it and closes it."""
    return SandboxPool(
        size=settings.code_pool_size or size or os.cpu_count() or 2,
        mode=settings.sandbox,
        memory_mb=settings.code_memory_mb,
        max_processes=settings.code_max_processes,
        tmp_mb=settings.code_tmp_mb,
    )
