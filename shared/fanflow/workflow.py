"""The in-memory graph of a workflow: nodes, edges, containers. Immutable once loaded.

The DSL loader (`fanflow.dsl.load`) builds it from a Dify export; the scheduler only reads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from fanflow.registry import BODY_STARTS, CONTAINER_NODE_TYPES, TASK_NODE_TYPES


@dataclass(frozen=True)
class RetryConfig:
    """Dify's `retry_config` (a constant interval), or fanflow's `fanflow.retry` extension:
    exponential backoff with a cap and jitter, limited to some failure reasons."""

    max_retries: int = 0
    retry_interval_ms: int = 0
    multiplier: float = 1.0
    max_interval_ms: int | None = None
    jitter: bool = False
    #: failure reasons worth a retry (see `TaskResult.reason`); None: every retryable failure
    retry_on: frozenset[str] | None = None
    #: from the `fanflow:` extension: applies to every task node type, not only Dify's
    extended: bool = False

    @property
    def enabled(self) -> bool:
        return self.max_retries > 0

    def allows(self, reason: str | None) -> bool:
        if self.retry_on is None:
            return True
        if reason == "breaker_open":
            # the breaker opened on timeouts, connect errors or 5xx: retrying those means
            # waiting out the open breaker too
            return bool(self.retry_on & {"breaker_open", "timeout", "connect", "status_5xx"})
        return (reason or "error") in self.retry_on

    def delay_ms(self, attempt: int, *, key: str) -> int:
        """Wait before retry number `attempt + 1`; the jitter is derived from `key`, so the
        scheduler stays deterministic."""
        delay = self.retry_interval_ms * (self.multiplier**attempt)
        if self.max_interval_ms is not None:
            delay = min(delay, self.max_interval_ms)
        if self.jitter:
            fraction = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            delay = delay / 2 + fraction * delay / 2
        return int(delay)


@dataclass(frozen=True)
class DefaultValue:
    key: str
    type: str
    value: Any


@dataclass(frozen=True)
class Node:
    """One node. `data` is the node's raw `data` mapping from the DSL (read-only by contract)."""

    id: str
    type: str
    title: str
    data: Mapping[str, Any]
    parent_id: str | None = None
    error_strategy: str | None = None  # "fail-branch" | "default-value" | None
    default_values: tuple[DefaultValue, ...] = ()
    retry: RetryConfig = RetryConfig()

    @property
    def is_task(self) -> bool:
        return self.type in TASK_NODE_TYPES

    @property
    def is_container(self) -> bool:
        return self.type in CONTAINER_NODE_TYPES

    def label(self) -> str:
        return f"{self.id} ({self.title})" if self.title else self.id


@dataclass(frozen=True)
class Edge:
    id: str
    source: str
    target: str
    source_handle: str = "source"


@dataclass(frozen=True)
class EnvironmentVariable:
    name: str
    value_type: str
    value: Any


@dataclass(frozen=True)
class Workflow:
    """A loaded workflow graph. Nodes keep the order of the file."""

    name: str
    mode: str  # "workflow" | "advanced-chat"
    version: str
    nodes: Mapping[str, Node]
    edges: tuple[Edge, ...]
    environment: tuple[EnvironmentVariable, ...] = ()
    conversation: tuple[EnvironmentVariable, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def out_edges(self) -> Mapping[str, tuple[Edge, ...]]:
        result: dict[str, list[Edge]] = {node_id: [] for node_id in self.nodes}
        for edge in self.edges:
            result.setdefault(edge.source, []).append(edge)
        return {k: tuple(v) for k, v in result.items()}

    @cached_property
    def in_edges(self) -> Mapping[str, tuple[Edge, ...]]:
        result: dict[str, list[Edge]] = {node_id: [] for node_id in self.nodes}
        for edge in self.edges:
            result.setdefault(edge.target, []).append(edge)
        return {k: tuple(v) for k, v in result.items()}

    @cached_property
    def reads(self) -> Mapping[str, tuple[tuple[str, ...], ...]]:
        """Node id -> the selectors the node reads (`fanflow.dsl.inputs.node_selectors`),
        computed once per loaded workflow: the scheduler ships them with every task."""
        from fanflow.dsl.inputs import node_selectors

        return {node_id: tuple(node_selectors(node)) for node_id, node in self.nodes.items()}

    @cached_property
    def order(self) -> Mapping[str, int]:
        """Position of each node in the file; the scheduler's deterministic tie-breaker."""
        return {node_id: i for i, node_id in enumerate(self.nodes)}

    @cached_property
    def children(self) -> Mapping[str | None, tuple[str, ...]]:
        """Node ids per container id (None: the top-level graph)."""
        result: dict[str | None, list[str]] = {}
        for node in self.nodes.values():
            result.setdefault(node.parent_id, []).append(node.id)
        return {k: tuple(v) for k, v in result.items()}

    def start_node(self, container_id: str | None = None) -> Node:
        """The entry node of the top-level graph or of a container's body."""
        wanted = {"start"} if container_id is None else set(BODY_STARTS.values())
        for node_id in self.children.get(container_id, ()):
            if self.nodes[node_id].type in wanted:
                return self.nodes[node_id]
        if container_id is not None:
            start_id = str(self.nodes[container_id].data.get("start_node_id"))
            if start_id in self.nodes:
                return self.nodes[start_id]
        raise KeyError(f"no start node in {container_id or 'the workflow'}")

    def ancestors(self, node_id: str) -> tuple[str, ...]:
        """Container ids enclosing a node, innermost first."""
        chain: list[str] = []
        parent = self.nodes[node_id].parent_id
        while parent is not None:
            chain.append(parent)
            parent = self.nodes[parent].parent_id
        return tuple(chain)
