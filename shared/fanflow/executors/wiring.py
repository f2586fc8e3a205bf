"""Building the `ExecutionContext` of a process from its settings (worker and `fanflow run`)."""

from __future__ import annotations

from typing import Any

from fanflow.executors.base import ExecutionContext
from fanflow.llm.providers import Providers
from fanflow.resilience.upstreams import Upstreams
from fanflow.settings import Settings


def context_from_settings(settings: Settings, *, http_client: Any = None) -> ExecutionContext:
    """One context per process: its breakers and rate limits live as long as it does."""
    return ExecutionContext(
        code_timeout_s=settings.code_timeout_s,
        code_memory_mb=settings.code_memory_mb,
        upstreams=Upstreams.from_settings(settings),
        http_client=http_client,
        llm_providers=Providers.from_settings(settings),
        allow_private_networks=settings.http_allow_private_networks,
        http_allow_list=tuple(settings.http_allow_list),
    )
