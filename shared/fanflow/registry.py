"""Every node type fanflow runs, declared once.

A `NodeType` says how the engine treats one DSL node type: evaluated inline by the scheduler,
run as a task on a worker queue class, or a container the scheduler drives (iteration,
loop); which function checks its fields at validate time, which extra selectors it reads,
whether Dify's `retry_config` applies. Every other table of node types (the validator's,
the scheduler's, the executors', the topology's queue classes) is derived from `NODE_TYPES`.

The functions are named by reference (``"module:attribute"``) and imported on first use, so
loading the registry loads no executor, HTTP client or sandbox: `fanflow validate` stays
cheap and the registry has no import cycle with the modules it names.

Adding a task node type is one executor module (an ``async (task, context) ->
ExecutionOutcome`` coroutine, raising `NodeError` on failure) and one entry here; `tests/test_registry.py` checks that every entry
resolves and that the topology serves every queue class.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

__all__ = [
    "BODY_STARTS",
    "CONTAINER_NODE_TYPES",
    "INLINE_NODE_TYPES",
    "LLM_NODE_TYPES",
    "NODE_TYPES",
    "QUEUE_CLASSES",
    "RETRYABLE_NODE_TYPES",
    "SUPPORTED_NODE_TYPES",
    "TASK_NODE_TYPES",
    "NodeKind",
    "NodeType",
    "node_type",
]


class NodeKind(enum.StrEnum):
    #: pure and cheap: the scheduler evaluates it in its step
    INLINE = "inline"
    #: calls out or runs user code: dispatched to a worker queue class
    TASK = "task"
    #: iteration or loop: the scheduler runs its body in scopes of its own
    CONTAINER = "container"


@dataclass(frozen=True)
class NodeType:
    """One node type. The ``*_ref`` fields name functions as ``"module:attribute"``."""

    name: str
    kind: NodeKind
    #: inline: ``(step, scope, node) -> (outputs, edge handle)`` (`fanflow.scheduler.inline`)
    evaluate_ref: str | None = None
    #: task: ``async (task, context) -> ExecutionOutcome`` (`fanflow.executors`)
    execute_ref: str | None = None
    #: task: the worker queue class (``tasks.<class>``) that runs it
    queue_class: str | None = None
    #: ``(data, problems) -> None``: appends what is wrong with the fields the engine reads
    check_ref: str | None = None
    #: ``(data) -> Iterable[selector candidates]``: selectors kept under keys without
    #: 'selector' in their name (`fanflow.dsl.inputs`)
    reads_ref: str | None = None
    #: Dify's `retry_config` applies (fanflow's `fanflow.retry` applies to every task node)
    retryable: bool = False
    #: resolves a model through the LLM providers
    llm: bool = False
    #: container: the node type that starts its body
    body_start: str | None = None

    @cached_property
    def evaluate(self) -> Any:
        return _resolve(self.evaluate_ref, self, "evaluate_ref")

    @cached_property
    def execute(self) -> Any:
        return _resolve(self.execute_ref, self, "execute_ref")

    @cached_property
    def check(self) -> Any:
        return _resolve(self.check_ref, self, "check_ref")

    @cached_property
    def reads(self) -> Any:
        return _resolve(self.reads_ref, self, "reads_ref")


def _resolve(ref: str | None, node: NodeType, field: str) -> Any:
    if ref is None:
        return None
    module, _, attribute = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise LookupError(f"node type {node.name!r}: {field} {ref!r} does not resolve") from exc


_INLINE = "fanflow.scheduler.inline:"
_CHECKS = "fanflow.dsl.checks:"
_READS = "fanflow.dsl.inputs:"
_EXEC = "fanflow.executors."


def _inline(
    name: str, evaluate: str, check: str | None = None, reads: str | None = None
) -> NodeType:
    return NodeType(
        name,
        NodeKind.INLINE,
        evaluate_ref=_INLINE + evaluate,
        check_ref=_CHECKS + check if check else None,
        reads_ref=_READS + reads if reads else None,
    )


def _task(
    name: str,
    execute: str,
    queue_class: str,
    check: str,
    *,
    reads: str | None = None,
    retryable: bool = False,
    llm: bool = False,
) -> NodeType:
    return NodeType(
        name,
        NodeKind.TASK,
        execute_ref=_EXEC + execute,
        queue_class=queue_class,
        check_ref=_CHECKS + check,
        reads_ref=_READS + reads if reads else None,
        retryable=retryable,
        llm=llm,
    )


def _container(name: str, check: str, body_start: str, reads: str | None = None) -> NodeType:
    return NodeType(
        name,
        NodeKind.CONTAINER,
        body_start=body_start,
        check_ref=_CHECKS + check,
        reads_ref=_READS + reads if reads else None,
    )


_DECLARED = (
    _inline("start", "start", "check_start"),
    _inline("end", "end", "check_end"),
    _inline("answer", "answer", "check_answer"),
    _inline("if-else", "if_else", "check_if_else"),
    _inline("template-transform", "template", "check_template"),
    _inline("variable-aggregator", "aggregator", "check_aggregator", "aggregator_reads"),
    # Dify's legacy name of the variable aggregator
    _inline("variable-assigner", "aggregator", "check_aggregator", "aggregator_reads"),
    _inline("assigner", "assigner", "check_assigner", "assigner_reads"),
    _inline("list-operator", "list_operator", "check_list_operator", "list_operator_reads"),
    _inline("iteration-start", "container_start"),
    _inline("loop-start", "container_start"),
    _inline("loop-end", "loop_end"),
    _container("iteration", "check_iteration", "iteration-start"),
    _container("loop", "check_loop", "loop-start", "loop_reads"),
    _task("code", "code:run_code_node", "code", "check_code", retryable=True),
    _task(
        "http-request",
        "http_request:run_http_request",
        "http",
        "check_http",
        reads="http_reads",
        retryable=True,
    ),
    _task("llm", "llm:run_llm_node", "llm", "check_llm", retryable=True, llm=True),
    _task(
        "parameter-extractor",
        "parameter_extractor:run_parameter_extractor",
        "llm",
        "check_parameter_extractor",
        reads="parameter_extractor_reads",
        llm=True,
    ),
    _task(
        "question-classifier",
        "question_classifier:run_question_classifier",
        "llm",
        "check_question_classifier",
        llm=True,
    ),
    # tools and their DSL checks live in fanflow.tools (provider catalog, parameters)
    NodeType(
        "tool",
        NodeKind.TASK,
        execute_ref=_EXEC + "tool:run_tool_node",
        queue_class="tool",
        check_ref="fanflow.tools.node:check_tool",
        reads_ref="fanflow.tools.node:tool_reads",
        retryable=True,
    ),
    NodeType(
        "document-extractor",
        NodeKind.TASK,
        execute_ref=_EXEC + "document_extractor:run_document_extractor",
        queue_class="tool",
        check_ref=_EXEC + "document_extractor:check_document_extractor",
        retryable=True,
    ),
    NodeType(
        "knowledge-retrieval",
        NodeKind.TASK,
        execute_ref=_EXEC + "knowledge_retrieval:run_knowledge_retrieval",
        queue_class="tool",
        check_ref=_EXEC + "knowledge_retrieval:check_knowledge_retrieval",
        retryable=True,
    ),
    NodeType(
        "agent",
        NodeKind.TASK,
        execute_ref=_EXEC + "agent:run_agent_node",
        queue_class="llm",
        check_ref=_EXEC + "agent:check_agent",
        retryable=True,
    ),
)

#: node type name -> its declaration
NODE_TYPES: Mapping[str, NodeType] = MappingProxyType({t.name: t for t in _DECLARED})


def _names(**where: Any) -> frozenset[str]:
    return frozenset(t.name for t in _DECLARED if all(getattr(t, k) == v for k, v in where.items()))


SUPPORTED_NODE_TYPES = frozenset(NODE_TYPES)
TASK_NODE_TYPES = _names(kind=NodeKind.TASK)
INLINE_NODE_TYPES = _names(kind=NodeKind.INLINE)
CONTAINER_NODE_TYPES = _names(kind=NodeKind.CONTAINER)
RETRYABLE_NODE_TYPES = _names(retryable=True)
LLM_NODE_TYPES = _names(llm=True)
#: container node type -> the node type that starts its body
BODY_STARTS: Mapping[str, str] = MappingProxyType(
    {t.name: t.body_start for t in _DECLARED if t.body_start is not None}
)
#: task node type -> worker queue class
QUEUE_CLASSES: Mapping[str, str] = MappingProxyType(
    {t.name: t.queue_class for t in _DECLARED if t.queue_class is not None}
)


def node_type(name: str) -> NodeType | None:
    """The declaration of node type `name`; None when fanflow does not run it."""
    return NODE_TYPES.get(name)
