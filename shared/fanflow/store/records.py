"""What the store hands out and takes in: plain frozen records, no SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from fanflow.errors import FanflowError


class StoreError(FanflowError):
    """The store refused an operation; the message names the run or app."""


class RunNotFound(StoreError, LookupError):
    """No run with this id."""


class RunExists(StoreError):
    """A run with this id was created before."""


class AppNotFound(StoreError, LookupError):
    """No app with this id."""


class AppBusy(StoreError):
    """The app has as many runs in progress as it may (`creating_run(max_running=...)`)."""

    def __init__(self, message: str, *, running: int) -> None:
        super().__init__(message)
        self.running = running


@dataclass(frozen=True)
class OutboxMessage:
    """A message to publish once the transaction that wrote it commits.

    `kind` is "task", "event" or "control"; `routing` is the routing key (or queue) the
    publisher understands; `message_id` is the deterministic id consumers dedupe on.
    """

    kind: str
    routing: str
    body: bytes
    message_id: str
    headers: dict[str, Any] = field(default_factory=dict)
    delay_ms: int = 0


@dataclass(frozen=True)
class AppRecord:
    id: str
    name: str
    mode: str
    dsl: str
    created_at: float


@dataclass(frozen=True)
class RunRecord:
    """One run's row. `state` is only loaded when asked for (`get_run(..., with_state=True)`)."""

    id: str
    app_id: str
    status: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: str | None
    user: str | None
    total_steps: int
    total_tokens: int
    exceptions_count: int
    created_at: float
    finished_at: float | None
    elapsed_time: float | None
    version: int
    state: bytes | None = None
    #: how often the run was redriven from its failed nodes
    redrive_count: int = 0


@dataclass(frozen=True)
class NodeExecutionRecord:
    id: str
    run_id: str
    node_id: str
    node_type: str
    title: str
    scope: str
    status: str
    inputs: dict[str, Any] | None
    outputs: dict[str, Any] | None
    error: str | None
    attempts: int
    total_tokens: int
    started_at: float | None
    finished_at: float | None
    created_at: float


@dataclass(frozen=True, slots=True)
class StoredItem:
    """One recorded iteration item, as `RunTransaction.collect_items` returns it."""

    index: int
    value: Any
    removed: bool


class ItemLike(Protocol):
    """An item to record: the scheduler's `RecordItem` command fits."""

    @property
    def iteration(self) -> str: ...
    @property
    def index(self) -> int: ...
    @property
    def value(self) -> Any: ...
    @property
    def removed(self) -> bool: ...
