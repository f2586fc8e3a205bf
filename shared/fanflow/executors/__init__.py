"""Executors of task nodes behind one entry point; `fanflow.registry` names each node type's
executor, imported on first use."""

from fanflow.context import ExecutionContext, ExecutionOutcome, Executor
from fanflow.executors.base import execute_task, execute_with_timeout, executor_for

__all__ = [
    "ExecutionContext",
    "ExecutionOutcome",
    "Executor",
    "execute_task",
    "execute_with_timeout",
    "executor_for",
]
