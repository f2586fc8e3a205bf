"""What the three LLM executors share: read `model`, find its endpoint, make the call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fanflow.context import ExecutionContext, node_label
from fanflow.errors import NodeError
from fanflow.llm.client import Completion, chat
from fanflow.llm.params import completion_params
from fanflow.llm.providers import (
    ProviderNotConfigured,
    Providers,
    ProvidersInvalid,
    providers_from_environment,
)
from fanflow.messages import NodeTask
from fanflow.resilience.redis_limits import CallKeys
from fanflow.resilience.upstreams import UpstreamFailure

T = TypeVar("T")


@dataclass(frozen=True)
class ModelConfig:
    """A node's `model`: `{provider, name, mode: chat|completion, completion_params}`."""

    provider: str
    name: str
    mode: str
    params: Mapping[str, Any]

    @classmethod
    def of(cls, task: NodeTask) -> ModelConfig:
        model = task.data.get("model")
        if not isinstance(model, Mapping) or not model.get("name"):
            raise NodeError(
                f"{node_label(task)}: model must be a mapping with a `name`",
                error_type="LLMNodeError",
            )
        params = model.get("completion_params")
        return cls(
            provider=str(model.get("provider") or ""),
            name=str(model["name"]),
            mode=str(model.get("mode") or "chat"),
            params=params if isinstance(params, Mapping) else {},
        )


async def invoke(
    task: NodeTask,
    context: ExecutionContext,
    messages: list[dict[str, Any]],
    *,
    extra: Mapping[str, Any] | None = None,
    check: Callable[[Completion], T] | None = None,
) -> tuple[Completion, T | None]:
    """One model call for `task` (through `context.upstreams` when set).

    `extra` request fields (tools, response_format) override the node's completion params.
    """
    label = node_label(task)
    model = ModelConfig.of(task)
    providers = _providers(context, label)
    try:
        endpoint = providers.resolve(model.provider, model.name)
    except ProviderNotConfigured as exc:
        raise _config_failure(f"{label}: {exc}") from exc
    body = {
        "messages": messages,
        **completion_params(model.params, task.lookup),
        **(extra or {}),
    }
    timeout_s = providers.timeout_s
    if task.timeout_s:
        timeout_s = min(timeout_s, task.timeout_s)
    return await chat(
        endpoint,
        body,
        label=label,
        timeout_s=timeout_s,
        http_client=(
            context.http_pool.llm_client(endpoint.base_url) if context.http_pool else None
        ),
        upstreams=context.upstreams,
        check=check,
        node_id=task.node_id,
        keys=call_keys(task),
    )


def call_keys(task: NodeTask) -> CallKeys:
    """The app and end user a task runs for (`sys.app_id`, `sys.user_id`, when the task
    carries them), for per-app and per-user limits."""
    found: list[str | None] = []
    for name in ("app_id", "user_id"):
        try:
            value = task.lookup(("sys", name))
        except KeyError:
            value = None
        found.append(str(value) if value not in (None, "") else None)
    return CallKeys(app=found[0], user=found[1])


def _providers(context: ExecutionContext, label: str) -> Providers:
    if context.llm_providers is not None:
        providers: Providers = context.llm_providers
        return providers
    try:
        return providers_from_environment()
    except ProvidersInvalid as exc:
        raise _config_failure(f"{label}: {exc}") from exc


def _config_failure(message: str) -> UpstreamFailure:
    # a configuration error: no retry can fix it, and no upstream was asked
    return UpstreamFailure(message, reason="invalid", retryable=False, error_type="LLMConfigError")
