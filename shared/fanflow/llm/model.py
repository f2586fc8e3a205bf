"""A node's `model` as the LLM layer reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fanflow.context import node_label
from fanflow.errors import NodeError
from fanflow.messages import NodeTask


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
