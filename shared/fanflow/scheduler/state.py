"""Run state: everything the scheduler knows about one run, JSON-serializable.

The state grows with the graph and with the iteration window, never with the number of
iteration items: finished item scopes are dropped once their result is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from fanflow.errors import DecodeError
from fanflow.vocabulary import FINISHED_STATUSES, NodeStatus, RunStatus

# short names of `fanflow.vocabulary`'s statuses, as the scheduler's modules use them
RUNNING = RunStatus.RUNNING
SUCCEEDED = RunStatus.SUCCEEDED
PARTIAL = RunStatus.PARTIAL_SUCCEEDED
FAILED = RunStatus.FAILED
STOPPED = RunStatus.STOPPED

NODE_RUNNING = NodeStatus.RUNNING
NODE_SUCCEEDED = NodeStatus.SUCCEEDED
NODE_EXCEPTION = NodeStatus.EXCEPTION
NODE_FAILED = NodeStatus.FAILED
NODE_SKIPPED = NodeStatus.SKIPPED
NODE_DONE = frozenset({NODE_SUCCEEDED, NODE_EXCEPTION, NODE_FAILED, NODE_SKIPPED})

TAKEN = "taken"
SKIPPED = "skipped"


@dataclass
class NodeRecord:
    status: str
    attempt: int = 0
    outputs: dict[str, Any] | None = None
    handle: str | None = None


@dataclass
class Failure:
    node_id: str
    error: str
    error_type: str = "NodeError"


@dataclass
class Scope:
    """One instance of a (sub)graph: the top level, one iteration item, or one loop round."""

    key: str
    parent: str | None = None
    container: str | None = None
    index: int = 0
    item: Any = None
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    edges: dict[str, str] = field(default_factory=dict)
    failure: Failure | None = None
    #: a loop-end node ran in this round
    loop_ended: bool = False
    #: End/Answer results inside an item or round; they reach the run only if it succeeds
    outputs: dict[str, Any] = field(default_factory=dict)
    answer: str | None = None


@dataclass
class IterationFrame:
    scope: str
    node_id: str
    count: int
    next_index: int = 0
    active: list[int] = field(default_factory=list)
    done: int = 0
    failure: Failure | None = None
    collecting: bool = False
    #: the Answer text of the highest-index item that succeeded: as in Dify's engine, only
    #: the last round's answer reaches the run's outputs (every round's text is streamed)
    answer: str | None = None
    answer_index: int = -1
    #: items that failed within the iteration's `fanflow` tolerance: {index, error}
    tolerated: list[dict[str, Any]] = field(default_factory=list)
    #: a redrive: indexes (ascending) of items done before it, not run again; and how
    #: many of them `next_index` passed
    skip: list[int] = field(default_factory=list)
    skipped: int = 0


@dataclass
class LoopFrame:
    scope: str
    node_id: str
    variables: dict[str, Any] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    round: int = 0


@dataclass
class RunState:
    run_id: str
    status: str = RUNNING
    inputs: dict[str, Any] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    conversation: dict[str, Any] = field(default_factory=dict)
    conversation_types: dict[str, str] = field(default_factory=dict)
    #: a chatflow turn: the conversation's earlier turns ({query, answer}), oldest first
    history: list[dict[str, str]] = field(default_factory=list)
    scopes: dict[str, Scope] = field(default_factory=dict)
    iterations: dict[str, IterationFrame] = field(default_factory=dict)
    loops: dict[str, LoopFrame] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    answer: str | None = None
    error: str | None = None
    steps: int = 0
    exceptions_count: int = 0
    total_tokens: int = 0
    #: how often the run was redriven (`fanflow.scheduler.redrive`)
    redrives: int = 0
    #: a redrive's top-level iterations (item store keys) -> indexes of items done before
    redrive_skip: dict[str, list[int]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


_ADAPTER = TypeAdapter(RunState)


def dump_state(state: RunState) -> bytes:
    return _ADAPTER.dump_json(state)


def load_state(data: bytes | str) -> RunState:
    try:
        return _ADAPTER.validate_json(data)
    except ValidationError as exc:
        raise DecodeError(f"cannot decode run state: {exc}") from exc


def child_scope_key(parent: str, container: str, index: int) -> str:
    own = f"{container}#{index}"
    return f"{parent}/{own}" if parent else own


def frame_key(scope: str, node_id: str) -> str:
    """Key of the iteration or loop run by `node_id` inside scope `scope`."""
    return f"{scope}|{node_id}"
