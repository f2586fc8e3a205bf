"""Executors of task nodes (code, and later llm, http-request, ...) behind one entry point."""

from fanflow.executors import code as _code  # noqa: F401  (registers the `code` executor)
from fanflow.executors.base import (
    ExecutionContext,
    ExecutionOutcome,
    Executor,
    execute_task,
    executor_for,
    register,
)

__all__ = [
    "ExecutionContext",
    "ExecutionOutcome",
    "Executor",
    "execute_task",
    "executor_for",
    "register",
]
