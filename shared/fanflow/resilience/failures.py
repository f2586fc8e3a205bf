"""What a failed external call is (`UpstreamFailure`), how it is retried in the worker
(`RetryPolicy`), and how long an upstream asked us to wait (`parse_retry_after`)."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

from tenacity import RetryCallState

from fanflow.errors import NodeError


class UpstreamFailure(NodeError):
    """A classified failure of one external call.

    `reason`: timeout | connect | status_5xx | status_429 | status_4xx | format |
    breaker_open | ssrf | invalid. `retryable`: worth another attempt of the node;
    `retry_after_s`: how long the upstream asked to wait first.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        retryable: bool,
        retry_after_s: float | None = None,
        status_code: int | None = None,
        error_type: str = "UpstreamError",
    ) -> None:
        super().__init__(message, error_type=error_type)
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.status_code = status_code

    def relabelled(self, message: str) -> UpstreamFailure:
        """The same classified failure under another message (one naming the node)."""
        return UpstreamFailure(
            message,
            reason=self.reason,
            retryable=self.retryable,
            retry_after_s=self.retry_after_s,
            status_code=self.status_code,
            error_type=self.error_type,
        )


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Short, in-worker retries; longer waits go back to the scheduler."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: bool = True
    retry_on: frozenset[str] = frozenset(
        {"timeout", "connect", "status_5xx", "status_429", "format"}
    )
    #: a longer wait (e.g. Retry-After: 30) is not slept: the failure is raised with
    #: `retry_after_s` for the scheduler instead
    max_in_worker_wait_s: float = 5.0

    def backoff_s(self, retry_number: int) -> float:
        """The wait before retry number `retry_number` (1-based), jittered in [½, 1]."""
        wait = min(
            self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry_number - 1)
        )
        return random.uniform(wait / 2, wait) if self.jitter else wait

    def retries(self, failure: BaseException) -> bool:
        return (
            isinstance(failure, UpstreamFailure)
            and failure.retryable
            and failure.reason in self.retry_on
            and (failure.retry_after_s or 0.0) <= self.max_in_worker_wait_s
        )


def parse_retry_after(value: str | None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds; None when absent or
    unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def wait_s(state: RetryCallState, policy: RetryPolicy) -> float:
    failure = state.outcome.exception() if state.outcome else None
    retry_after = getattr(failure, "retry_after_s", None)
    if retry_after is not None:
        return float(retry_after)
    return min(policy.backoff_s(state.attempt_number), policy.max_in_worker_wait_s)
