"""Provider failover: the models a call moves on to when its model is failing.

A node lists them in its `fanflow` extension, tried in order::

    fanflow:
      fallback_models:
        - gpt-4o-mini                                 # same provider as the node's model
        - {provider: anthropic, name: claude-3-5-haiku, completion_params: {temperature: 0}}

and the providers file may give a model's fallbacks for every node that uses it
(`models: {"openai:gpt-4o": {fallback_models: ["azure:gpt-4o"]}}`); the node's list comes
first. A call moves to the next model when the one before failed for its upstream's sake:
its breaker is open, 429 beyond its retries (or no fleet-wide budget), 5xx, a timeout or a
refused connection — never for a 4xx or an answer that does not fit (the next model would
be asked the same thing). The node's outputs then record which model answered
(`model: {provider, name, failed_over: [{model, reason}]}`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fanflow.context import node_label
from fanflow.errors import NodeError
from fanflow.llm.model import ModelConfig
from fanflow.llm.providers import Providers
from fanflow.messages import NodeTask
from fanflow.resilience.upstreams import UpstreamFailure

#: failures that say the model's upstream is unwell or out of budget
FAILOVER_REASONS = frozenset({"breaker_open", "status_429", "status_5xx", "timeout", "connect"})


@dataclass(frozen=True)
class ModelAnswer:
    """Which model answered a call that had fallbacks, and the ones it moved past."""

    provider: str
    name: str
    #: (provider:model, failure reason) of each model tried before, in order
    failed_over: tuple[tuple[str, str], ...] = ()

    def as_output(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "name": self.name,
            "failed_over": [
                {"model": model, "reason": reason} for model, reason in self.failed_over
            ],
        }


def worth_failing_over(failure: UpstreamFailure) -> bool:
    return failure.reason in FAILOVER_REASONS


def candidates(task: NodeTask, model: ModelConfig, providers: Providers) -> list[ModelConfig]:
    """The node's model, then its fallbacks (the node's, then the providers file's), each
    once."""
    label = node_label(task)
    extension = task.data.get("fanflow")
    listed = extension.get("fallback_models") if isinstance(extension, Mapping) else None
    if listed is not None and not isinstance(listed, list):
        raise NodeError(
            f"{label}: fanflow.fallback_models must be a list of model names or "
            "{provider, name} mappings",
            error_type="LLMNodeError",
        )
    found = [model]
    for index, entry in enumerate(listed or []):
        found.append(_fallback(entry, model, f"{label}: fanflow.fallback_models[{index}]"))
    for provider, name in providers.fallbacks(model.provider, model.name):
        found.append(ModelConfig(provider, name, model.mode, model.params))
    unique: list[ModelConfig] = []
    seen: set[tuple[str, str]] = set()
    for candidate in found:
        key = (candidate.provider, candidate.name)
        if key not in seen:
            seen.add(key)
            unique.append(candidate)
    return unique


def _fallback(entry: Any, model: ModelConfig, where: str) -> ModelConfig:
    if isinstance(entry, str) and entry:
        return ModelConfig(model.provider, entry, model.mode, model.params)
    if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and entry["name"]:
        params = entry.get("completion_params")
        if params is not None and not isinstance(params, Mapping):
            raise NodeError(
                f"{where}.completion_params must be a mapping", error_type="LLMNodeError"
            )
        return ModelConfig(
            str(entry.get("provider") or model.provider),
            entry["name"],
            str(entry.get("mode") or model.mode),
            params if params is not None else model.params,
        )
    raise NodeError(
        f"{where}: expected a model name or a mapping with a `name`, got {entry!r}",
        error_type="LLMNodeError",
    )
