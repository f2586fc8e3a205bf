"""Running a task: the one entry point over the executors `fanflow.registry` declares.

An executor takes a `NodeTask` and an `ExecutionContext`, returns an `ExecutionOutcome` and
raises `NodeError` when the node fails. `execute_task` turns both into a `TaskResult`, so the
worker shells never see an exception for a node's failure.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from fanflow import defaults
from fanflow.context import ExecutionContext, Executor, node_label
from fanflow.errors import NodeError
from fanflow.messages import NodeTask, TaskResult
from fanflow.registry import node_type as _node_type
from fanflow.resilience.upstreams import UpstreamFailure

logger = logging.getLogger(__name__)

#: error types that no retry can fix (the node asks for something fanflow lacks)
NOT_RETRYABLE_ERROR_TYPES = frozenset({"NotSupportedError"})


def executor_for(node_type: str) -> Executor | None:
    """The executor `fanflow.registry` declares for a task node type (None: not a task)."""
    declared = _node_type(node_type)
    return declared.execute if declared is not None else None


async def execute_task(task: NodeTask, context: ExecutionContext) -> TaskResult:
    """Run one task attempt with the executor of its node type; always a `TaskResult`.

    A `NodeError` becomes a failed result with its message and error type (an
    `UpstreamFailure` also gives its reason, whether a retry can help, and the upstream's
    Retry-After); any other exception is a fanflow bug, logged with its traceback and
    reported as ``InternalError``. Cancellation is not a failure and propagates.
    """
    started = time.monotonic()
    executor = executor_for(task.node_type)
    try:
        if executor is None:
            raise NodeError(_unsupported(task), error_type="NotSupportedError")
        outcome = await executor(task, context)
    except UpstreamFailure as exc:
        return _upstream_failed(task, exc, started)
    except NodeError as exc:
        return _failed(task, str(exc), exc.error_type, started)
    except Exception as exc:
        logger.exception("executor for %s failed on task %s", task.node_type, task.task_id)
        message = f"{node_label(task)}: internal error in fanflow: {type(exc).__name__}: {exc}"
        return _failed(task, message, "InternalError", started)
    return task.result(
        status="succeeded",
        outputs=outcome.outputs,
        edge_handle=outcome.edge_handle,
        total_tokens=outcome.total_tokens,
        elapsed_s=time.monotonic() - started,
    )


def _unsupported(task: NodeTask) -> str:
    kind = task.node_type
    if _node_type(kind) is not None:
        return f"{node_label(task)}: node type '{kind}' is not a task node fanflow's executors run"
    return f"{node_label(task)}: node type '{kind}' is not supported by fanflow's executors"


def _failed(task: NodeTask, error: str, error_type: str, started: float) -> TaskResult:
    return task.failed(
        error,
        error_type=error_type,
        retryable=error_type not in NOT_RETRYABLE_ERROR_TYPES,
        elapsed_s=time.monotonic() - started,
    )


def _upstream_failed(task: NodeTask, failure: UpstreamFailure, started: float) -> TaskResult:
    label = node_label(task)
    message = str(failure)
    if not message.startswith(label):  # e.g. a breaker's refusal names only the upstream
        message = f"{label}: {message}"
    retry_after = failure.retry_after_s
    return task.failed(
        message,
        error_type=failure.error_type,
        retryable=failure.retryable and failure.error_type not in NOT_RETRYABLE_ERROR_TYPES,
        reason=failure.reason,
        retry_after_ms=math.ceil(retry_after * 1000) if retry_after is not None else None,
        elapsed_s=time.monotonic() - started,
    )


DEFAULT_TASK_TIMEOUT_S = defaults.TASK_TIMEOUT_S


async def execute_with_timeout(
    task: NodeTask, context: ExecutionContext, *, timeout_s: float | None = None
) -> TaskResult:
    """`execute_task` within the task's time limit (its own, else `timeout_s`, else 300 s);
    past it, a failed result with reason "timeout" (retryable, as Dify retries timeouts)."""
    limit_s = task.timeout_s or timeout_s or DEFAULT_TASK_TIMEOUT_S
    started = time.monotonic()
    try:
        return await asyncio.wait_for(execute_task(task, context), limit_s)
    except TimeoutError:
        return task.failed(
            f"{node_label(task)}: task timed out after {limit_s:g} s",
            error_type="TimeoutError",
            reason="timeout",
            elapsed_s=time.monotonic() - started,
        )
