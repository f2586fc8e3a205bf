"""What the three LLM executors share: read `model`, find its endpoint, make the call —
moving on to the node's fallback models when the model's upstream fails
(`fanflow.llm.failover`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fanflow.context import ExecutionContext, node_label
from fanflow.llm.cache import CachePolicy, cache_key, decode, encode
from fanflow.llm.client import Completion, chat
from fanflow.llm.failover import ModelAnswer, candidates, worth_failing_over
from fanflow.llm.model import ModelConfig
from fanflow.llm.params import completion_params
from fanflow.llm.providers import (
    ProviderNotConfigured,
    Providers,
    ProvidersInvalid,
    provider_name,
    providers_from_environment,
)
from fanflow.messages import NodeTask
from fanflow.metrics import LLM_CACHE, LLM_FAILOVERS
from fanflow.resilience.redis_limits import CallKeys
from fanflow.resilience.upstreams import UpstreamFailure

__all__ = ["ModelConfig", "call_keys", "invoke"]

T = TypeVar("T")
log = logging.getLogger("fanflow.llm")


async def invoke(
    task: NodeTask,
    context: ExecutionContext,
    messages: list[dict[str, Any]],
    *,
    extra: Mapping[str, Any] | None = None,
    check: Callable[[Completion], T] | None = None,
) -> tuple[Completion, T | None]:
    """One model call for `task` (through `context.upstreams` when set), on its model or,
    when that one's upstream fails, on its fallbacks in turn.

    `extra` request fields (tools, response_format) override the node's completion params.
    """
    label = node_label(task)
    providers = _providers(context, label)
    models = candidates(task, ModelConfig.of(task), providers)
    failed_over: list[tuple[str, str]] = []
    for index, model in enumerate(models):
        try:
            completion, checked = await _call(
                task, context, providers, model, messages, extra=extra, check=check
            )
        except UpstreamFailure as failure:
            if index + 1 == len(models) or not worth_failing_over(failure):
                if failed_over:
                    tried = ", ".join(name for name, _ in failed_over)
                    failure.args = (f"{failure} (after failing over from {tried})",)
                raise
            name = f"{provider_name(model.provider)}:{model.name}"
            following = models[index + 1]
            LLM_FAILOVERS.labels(name, failure.reason).inc()
            log.warning(
                "%s: model %s failed (%s): failing over to %s:%s",
                label,
                name,
                failure.reason,
                provider_name(following.provider),
                following.name,
            )
            failed_over.append((name, failure.reason))
            continue
        if len(models) > 1:
            answer = ModelAnswer(provider_name(model.provider), model.name, tuple(failed_over))
            completion = dataclasses.replace(completion, answered_by=answer)
        return completion, checked
    raise AssertionError("unreachable: a node always has its own model")


async def _call(
    task: NodeTask,
    context: ExecutionContext,
    providers: Providers,
    model: ModelConfig,
    messages: list[dict[str, Any]],
    *,
    extra: Mapping[str, Any] | None,
    check: Callable[[Completion], T] | None,
) -> tuple[Completion, T | None]:
    label = node_label(task)
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
    keys = call_keys(task)
    policy = CachePolicy.of(task) if context.llm_cache is not None else None
    key = None
    if policy is not None and policy.admits(body):
        if keys.app is None:
            LLM_CACHE.labels("no_app").inc()  # the task does not say its app: never shared
        else:
            key = cache_key(keys.app, endpoint.upstream, endpoint.base_url, body)
            cached = await context.llm_cache.get(key)
            hit = decode(cached) if cached is not None else None
            if hit is not None:
                LLM_CACHE.labels("hit").inc()
                return hit, (check(hit) if check is not None else None)
            LLM_CACHE.labels("miss").inc()
    costs = context.llm_costs
    on_billed = None
    if costs is not None:
        await costs.before_call(task.run_id, label)

        async def on_billed(completion: Completion) -> Completion:
            usage = completion.usage
            price = await costs.billed(
                task.run_id, label, endpoint.upstream, usage.prompt_tokens, usage.completion_tokens
            )
            if price is None:
                return completion
            return dataclasses.replace(completion, usage=dataclasses.replace(usage, price=price))

    completion, checked = await chat(
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
        keys=keys,
        on_billed=on_billed,
    )
    if key is not None and policy is not None:
        await context.llm_cache.put(key, encode(completion), policy.ttl_s)
    return completion, checked


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
