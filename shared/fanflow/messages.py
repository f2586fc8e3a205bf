"""Messages between the scheduler's shells and the workers: a node task and its result.

Frozen, versioned pydantic models. A task carries everything a worker needs (no database on
workers): the node's DSL data and the value of every selector the node reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from fanflow.errors import DecodeError
from fanflow.variables import selector_key, walk_path

MESSAGE_VERSION = 1


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    version: int = MESSAGE_VERSION

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, body: bytes | str):  # type: ignore[no-untyped-def]
        try:
            return cls.model_validate_json(body)
        except ValidationError as exc:
            raise DecodeError(f"cannot decode {cls.__name__}: {exc}") from exc


def task_id_for(run_id: str, node_id: str, scope: str, attempt: int) -> str:
    """Deterministic id of one attempt of one node in one scope of one run."""
    return f"{run_id}/{scope or '-'}/{node_id}/{attempt}"


class NodeTask(_Message):
    """One attempt at running a task node (code, llm, http-request, ...)."""

    task_id: str
    run_id: str
    node_id: str
    node_type: str
    node_title: str = ""
    scope: str = ""
    attempt: int = 0
    data: dict[str, Any]
    #: selector key ("node.var.path") -> value, for every selector the node reads
    variables: dict[str, Any] = {}
    timeout_s: float | None = None
    #: a node with conversation memory: its window of earlier turns, oldest first
    history: list[dict[str, str]] = []
    #: the run's redrive count when dispatched: a stop of an earlier attempt spares it
    generation: int = 0

    def lookup(self, selector: Sequence[str]) -> Any:
        """Resolve a selector from the values carried (KeyError when absent)."""
        key = selector_key(selector)
        if key in self.variables:
            return self.variables[key]
        for cut in range(len(selector) - 1, 1, -1):
            prefix = selector_key(selector[:cut])
            if prefix in self.variables:
                return walk_path(self.variables[prefix], selector[cut:])
        raise KeyError(key)

    def result(self, **fields: Any) -> TaskResult:
        """This attempt's result; `fields` are those of `TaskResult` besides the identity."""
        return TaskResult(
            task_id=self.task_id,
            run_id=self.run_id,
            node_id=self.node_id,
            scope=self.scope,
            attempt=self.attempt,
            **fields,
        )

    def failed(self, error: str, *, error_type: str, **fields: Any) -> TaskResult:
        """A failed result of this attempt (`fields`: retryable, reason, elapsed_s, ...)."""
        return self.result(status="failed", error=error, error_type=error_type, **fields)


class TaskResult(_Message):
    """What became of one task attempt."""

    task_id: str
    run_id: str
    node_id: str
    scope: str = ""
    attempt: int = 0
    status: Literal["succeeded", "failed"]
    outputs: dict[str, Any] = {}
    #: for branching task nodes (question-classifier): the handle of the taken edge
    edge_handle: str | None = None
    error: str | None = None
    error_type: str | None = None
    #: failures worth another attempt (timeouts, 5xx, 429); the node's retry_config decides
    retryable: bool = True
    #: why it failed, for `fanflow.retry.on`: timeout, connect, status_5xx, status_429,
    #: status_4xx, format, breaker_open, ssrf, invalid; None for other node errors
    reason: str | None = None
    retry_after_ms: int | None = None
    elapsed_s: float = 0.0
    total_tokens: int = 0
