"""Executors of task nodes (code, and later llm, http-request, ...) behind one entry point."""

from fanflow.executors import code as _code  # noqa: F401  (registers the `code` executor)
from fanflow.executors import http_request as _http_request  # noqa: F401  (registers it)
from fanflow.executors import llm as _llm  # noqa: F401
from fanflow.executors import parameter_extractor as _parameter_extractor  # noqa: F401
from fanflow.executors import question_classifier as _question_classifier  # noqa: F401
from fanflow.executors.base import (
    ExecutionContext,
    ExecutionOutcome,
    Executor,
    execute_task,
    execute_with_timeout,
    executor_for,
    register,
)

__all__ = [
    "ExecutionContext",
    "ExecutionOutcome",
    "Executor",
    "execute_task",
    "execute_with_timeout",
    "executor_for",
    "register",
]
