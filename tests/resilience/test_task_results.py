"""`execute_task` carries an `UpstreamFailure`'s reason, retryability and Retry-After."""

from __future__ import annotations

import pytest

from fanflow.errors import NodeError
from fanflow.executors import ExecutionContext, ExecutionOutcome, base, execute_task
from fanflow.messages import NodeTask
from fanflow.resilience.upstreams import UpstreamFailure


def task() -> NodeTask:
    return NodeTask(
        task_id="run-1/-/call/0",
        run_id="run-1",
        node_id="call",
        node_type="x-upstream-test",
        node_title="Call",
        data={},
    )


async def fails_with(monkeypatch: pytest.MonkeyPatch, error: NodeError):  # type: ignore[no-untyped-def]
    async def executor(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
        raise error

    monkeypatch.setattr(base, "executor_for", lambda node_type: executor)
    return await execute_task(task(), ExecutionContext())


async def test_retry_after_and_reason_reach_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    result = await fails_with(
        monkeypatch,
        UpstreamFailure(
            "call (Call): HTTP 429",
            reason="status_429",
            retryable=True,
            retry_after_s=30.0001,
            error_type="HTTPResponseCodeError",
        ),
    )
    assert result.status == "failed"
    assert (result.reason, result.retryable, result.retry_after_ms) == ("status_429", True, 30001)
    assert result.error == "call (Call): HTTP 429"
    assert result.error_type == "HTTPResponseCodeError"


async def test_a_breaker_refusal_is_not_retryable_and_names_the_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = await fails_with(
        monkeypatch,
        UpstreamFailure(
            "upstream host:x is failing",
            reason="breaker_open",
            retryable=False,
            error_type="CircuitOpenError",
        ),
    )
    assert (result.reason, result.retryable, result.retry_after_ms) == ("breaker_open", False, None)
    assert result.error == "call (Call): upstream host:x is failing"


async def test_other_node_errors_keep_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    result = await fails_with(monkeypatch, NodeError("call (Call): no", error_type="X"))
    assert (result.reason, result.retryable, result.retry_after_ms) == (None, True, None)
