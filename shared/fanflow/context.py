"""What an executor is given and gives back: the process's `ExecutionContext`, a node's
`ExecutionOutcome`, and how error messages name a node.

Below the executors and the LLM layer alike, so neither imports the other for these.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fanflow.http_pool import HttpPool
from fanflow.messages import NodeTask
from fanflow.nodes.outputs import DEFAULT_LIMITS, CodeLimits
from fanflow.sandbox.process import DEFAULT_MAX_OUTPUT_BYTES

__all__ = ["ExecutionContext", "ExecutionOutcome", "Executor", "node_label"]


@dataclass(frozen=True, kw_only=True)
class ExecutionContext:
    """What executors need from the worker's settings; one per worker process."""

    #: a code node's wall-clock limit when its task carries no `timeout_s` (Dify: 60 s)
    code_timeout_s: float = 60.0
    code_memory_mb: int = 512
    #: CPU seconds per code run; None leaves only the wall-clock limit
    code_cpu_s: int | None = None
    code_max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    #: the checks on a code node's outputs (Dify's CODE_MAX_* limits)
    code_limits: CodeLimits = DEFAULT_LIMITS
    #: the warm code sandbox (`fanflow.sandbox.pool.SandboxPool`) of this process; its
    #: owner (the worker, the embedded runner) closes it. None: code nodes cannot run
    code_sandbox: Any = None
    #: breakers and rate limits per upstream (`fanflow.resilience.upstreams.Upstreams`)
    upstreams: Any = None
    #: the process's pooled HTTP clients (`fanflow.http_pool.HttpPool`), opened and closed
    #: by whoever owns this context (the worker, the embedded runner); None: a client per call
    http_pool: HttpPool | None = None
    #: LLM providers (`fanflow.llm.providers.Providers`); None: from the environment
    llm_providers: Any = None
    #: the LLM response cache (`fanflow.llm.cache`) of nodes with `fanflow.cache`; None:
    #: no caching
    llm_cache: Any = None
    #: prices, the runs' LLM ledger and budget (`fanflow.llm.costs.CostAccounting`); None:
    #: tokens and costs are not counted
    llm_costs: Any = None
    #: SSRF guard opt-outs for the http-request node (tests, private deployments)
    allow_private_networks: bool = False
    http_allow_list: tuple[str, ...] = ()
    #: the tool providers of this process (`fanflow.tools.catalog.ToolCatalog`); None:
    #: the built-ins, or the catalog `fanflow.tools.catalog.activate` installed
    tools: Any = None


@dataclass(frozen=True)
class ExecutionOutcome:
    """A node's success: its outputs and, for branching nodes, the handle of the taken edge."""

    outputs: dict[str, Any] = field(default_factory=dict)
    edge_handle: str | None = None
    total_tokens: int = 0


Executor = Callable[[NodeTask, ExecutionContext], Awaitable[ExecutionOutcome]]


def node_label(task: NodeTask) -> str:
    """How error messages name the node: `id (title)`."""
    return f"{task.node_id} ({task.node_title})" if task.node_title else task.node_id
