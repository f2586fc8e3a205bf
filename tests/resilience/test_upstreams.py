"""`Upstreams.call`: retries, Retry-After, breaker, concurrency and rate limits, metrics."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from fanflow.resilience import upstreams as upstreams_module
from fanflow.resilience.breaker import BreakerConfig
from fanflow.resilience.ratelimit import TokenBucket, UpstreamLimits, limits_for, load_limits
from fanflow.resilience.upstreams import RetryPolicy, UpstreamFailure, Upstreams, parse_retry_after
from tests.resilience.clock import FakeClock

FAST = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.005)


def name() -> str:
    """A fresh upstream name per test: metrics are process-wide."""
    return f"test:{uuid.uuid4().hex[:8]}"


def sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


class Script:
    """An attempt that fails with the given failures, then returns "ok"."""

    def __init__(self, *failures: UpstreamFailure) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def failure(reason: str, *, retryable: bool = True, **kwargs: float) -> UpstreamFailure:
    return UpstreamFailure(f"it failed: {reason}", reason=reason, retryable=retryable, **kwargs)  # type: ignore[arg-type]


async def test_retries_5xx_then_succeeds_and_counts_every_attempt() -> None:
    upstream = name()
    attempt = Script(failure("status_5xx"), failure("timeout"))
    assert await Upstreams().call(upstream, attempt, kind="llm", retry=FAST) == "ok"
    assert attempt.calls == 3
    assert (
        sample("fanflow_upstream_retries_total", upstream=upstream, kind="llm", reason="status_5xx")
        == 1
    )
    assert (
        sample("fanflow_upstream_retries_total", upstream=upstream, kind="llm", reason="timeout")
        == 1
    )
    for outcome, count in (("status_5xx", 1), ("timeout", 1), ("success", 1)):
        assert (
            sample("fanflow_upstream_calls_total", upstream=upstream, kind="llm", outcome=outcome)
            == count
        )
    assert (
        sample("fanflow_upstream_call_duration_seconds_count", upstream=upstream, kind="llm") == 3
    )


async def test_gives_up_after_max_attempts_with_the_last_failure() -> None:
    attempt = Script(*(failure("status_5xx") for _ in range(5)))
    with pytest.raises(UpstreamFailure) as caught:
        await Upstreams().call(name(), attempt, kind="llm", retry=FAST)
    assert attempt.calls == 3
    assert caught.value.reason == "status_5xx" and caught.value.retryable


@pytest.mark.parametrize(
    "reason, retryable", [("status_4xx", False), ("invalid", False), ("status_5xx", False)]
)
async def test_does_not_retry_what_the_policy_or_the_failure_excludes(
    reason: str, retryable: bool
) -> None:
    attempt = Script(failure(reason, retryable=retryable))
    with pytest.raises(UpstreamFailure):
        await Upstreams().call(name(), attempt, kind="http", retry=FAST)
    assert attempt.calls == 1


async def test_retry_on_limits_the_reasons() -> None:
    attempt = Script(failure("format"))
    policy = RetryPolicy(retry_on=frozenset({"status_5xx"}), initial_backoff_s=0.001)
    with pytest.raises(UpstreamFailure):
        await Upstreams().call(name(), attempt, kind="llm", retry=policy)
    assert attempt.calls == 1


async def test_backoff_grows_and_is_capped() -> None:
    clock = FakeClock()
    policy = RetryPolicy(
        max_attempts=5, initial_backoff_s=0.5, multiplier=2, max_backoff_s=1.5, jitter=False
    )
    attempt = Script(*(failure("connect") for _ in range(4)))
    upstreams = Upstreams(clock=clock, sleep=clock.sleep)
    assert await upstreams.call(name(), attempt, kind="http", retry=policy) == "ok"
    assert clock.slept == [0.5, 1.0, 1.5, 1.5]


async def test_jitter_stays_within_half_to_full_backoff() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, multiplier=2, max_backoff_s=10)
    for retry in range(1, 5):
        full = min(10, 2 ** (retry - 1))
        assert all(full / 2 <= policy.backoff_s(retry) <= full for _ in range(50))


async def test_retry_after_under_the_cap_is_slept() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(seconds)

    attempt = Script(failure("status_429", retry_after_s=0.05))
    started = time.monotonic()
    assert await Upstreams(sleep=sleep).call(name(), attempt, kind="llm", retry=FAST) == "ok"
    assert slept == [0.05]
    assert time.monotonic() - started >= 0.05
    assert attempt.calls == 2


async def test_retry_after_over_the_cap_goes_back_to_the_scheduler_without_sleeping() -> None:
    clock = FakeClock()
    attempt = Script(failure("status_429", retry_after_s=30.0))
    with pytest.raises(UpstreamFailure) as caught:
        await Upstreams(clock=clock, sleep=clock.sleep).call(name(), attempt, kind="llm")
    assert caught.value.retryable is True
    assert caught.value.retry_after_s == 30.0
    assert attempt.calls == 1
    assert clock.slept == []


async def test_an_open_breaker_fails_fast_without_calling() -> None:
    clock = FakeClock()
    upstream = name()
    upstreams = Upstreams(
        breaker=BreakerConfig(window_size=4, min_calls=4, open_wait_s=30), clock=clock
    )
    gauge = "fanflow_circuit_breaker_state"
    for _ in range(4):
        with pytest.raises(UpstreamFailure):
            await upstreams.call(
                upstream,
                Script(failure("status_5xx")),
                kind="llm",
                retry=RetryPolicy(max_attempts=1),
            )
    assert upstreams.breaker_state(upstream) == "open"
    assert sample(gauge, upstream=upstream) == 2

    attempt = Script()
    with pytest.raises(UpstreamFailure) as caught:
        await upstreams.call(upstream, attempt, kind="llm")
    assert attempt.calls == 0
    refused = caught.value
    # retryable once the breaker has waited: the scheduler sends the task again then
    assert (refused.reason, refused.retryable, refused.error_type) == (
        "breaker_open",
        True,
        "CircuitOpenError",
    )
    assert refused.retry_after_s is not None and 29 < refused.retry_after_s <= 30
    assert upstream in str(refused) and "30 s" in str(refused)
    assert (
        sample(
            "fanflow_upstream_calls_total", upstream=upstream, kind="llm", outcome="breaker_open"
        )
        == 1
    )

    clock.advance(30)
    assert upstreams.breaker_state(upstream) == "half_open"
    assert sample(gauge, upstream=upstream) == 1
    for _ in range(3):  # half_open_probes successful probes close it
        assert await upstreams.call(upstream, Script(), kind="llm") == "ok"
    assert upstreams.breaker_state(upstream) == "closed"
    assert sample(gauge, upstream=upstream) == 0


async def test_client_errors_and_bad_replies_do_not_open_the_breaker() -> None:
    upstream = name()
    upstreams = Upstreams(breaker=BreakerConfig(window_size=4, min_calls=4))
    once = RetryPolicy(max_attempts=1)
    for reason in ["status_4xx", "format", "invalid", "status_4xx", "format", "ssrf"]:
        with pytest.raises(UpstreamFailure):
            await upstreams.call(upstream, Script(failure(reason)), kind="llm", retry=once)
    assert upstreams.breaker_state(upstream) == "closed"


async def test_retries_stop_when_the_breaker_opens_meanwhile() -> None:
    upstreams = Upstreams(breaker=BreakerConfig(window_size=2, min_calls=2))
    attempt = Script(*(failure("connect") for _ in range(5)))
    with pytest.raises(UpstreamFailure) as caught:
        await upstreams.call(name(), attempt, kind="llm", retry=FAST)
    assert attempt.calls == 2
    assert caught.value.reason == "breaker_open"


async def test_other_exceptions_pass_through_and_free_the_probe() -> None:
    clock = FakeClock()
    upstream = name()
    upstreams = Upstreams(
        breaker=BreakerConfig(window_size=1, min_calls=1, half_open_probes=1), clock=clock
    )
    with pytest.raises(UpstreamFailure):
        await upstreams.call(
            upstream, Script(failure("timeout")), kind="llm", retry=RetryPolicy(max_attempts=1)
        )
    clock.advance(30)

    async def broken() -> str:
        raise KeyError("a bug, not the upstream")

    with pytest.raises(KeyError):
        await upstreams.call(upstream, broken, kind="llm")
    assert upstreams.breaker_state(upstream) == "half_open"
    assert await upstreams.call(upstream, Script(), kind="llm") == "ok"  # the probe slot is free
    assert upstreams.breaker_state(upstream) == "closed"


async def test_concurrency_limit_is_never_exceeded() -> None:
    upstream = name()
    upstreams = Upstreams(limits={upstream: UpstreamLimits(max_concurrency=2)})
    running = peak = 0

    async def attempt() -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return 1

    results = await asyncio.gather(
        *(upstreams.call(upstream, attempt, kind="http") for _ in range(10))
    )
    assert results == [1] * 10
    assert peak == 2
    waits = sample("fanflow_rate_limit_wait_seconds_count", upstream=upstream, kind="http")
    assert waits == 10


async def test_rps_limit_spaces_calls() -> None:
    upstream = name()
    upstreams = Upstreams(default_limits=UpstreamLimits(rps=10))
    started = time.monotonic()
    await asyncio.gather(*(upstreams.call(upstream, Script(), kind="llm") for _ in range(5)))
    # 5 calls at 10 a second, burst 1: 4 intervals of 0.1 s at least
    assert time.monotonic() - started >= 0.35
    assert (
        sample("fanflow_rate_limit_wait_seconds_sum", upstream=upstream, kind="llm") >= 0.35 + 0.3
    )


def test_token_bucket_allows_a_burst_then_spaces_calls() -> None:
    clock = FakeClock()
    bucket = TokenBucket(UpstreamLimits(rps=10, burst=3), clock=clock)
    assert [round(bucket.reserve(), 3) for _ in range(5)] == [0, 0, 0, 0.1, 0.2]
    clock.advance(10)  # a quiet spell refills to the burst, not beyond
    assert [round(bucket.reserve(), 3) for _ in range(4)] == [0, 0, 0, 0.1]


async def test_429_halves_the_rate_and_successes_restore_it() -> None:
    upstream = name()
    upstreams = Upstreams(limits={upstream: UpstreamLimits(rps=100, recovery_rps=20)})
    once = RetryPolicy(max_attempts=1)
    assert upstreams.current_rps(upstream) == 100
    for expected in (50, 25):
        with pytest.raises(UpstreamFailure):
            await upstreams.call(upstream, Script(failure("status_429")), kind="llm", retry=once)
        assert upstreams.current_rps(upstream) == expected
    await upstreams.call(upstream, Script(), kind="llm")
    assert upstreams.current_rps(upstream) == 45
    for _ in range(5):
        await upstreams.call(upstream, Script(), kind="llm")
    assert upstreams.current_rps(upstream) == 100  # never above the configured rate


def test_the_rate_never_drops_below_its_floor() -> None:
    bucket = TokenBucket(UpstreamLimits(rps=16))
    for _ in range(10):
        bucket.slow_down()
    assert bucket.rps == 1.0  # rps / 16


def test_limits_by_exact_name_then_pattern_then_default(tmp_path: Path) -> None:
    path = tmp_path / "limits.yml"
    path.write_text(
        "openai:gpt-4o: {rps: 5, max_concurrency: 2}\n"
        "'openai:*': {rps: 1}\n"
        "'host:*.example.com': {max_concurrency: 4}\n"
    )
    limits = load_limits(path)
    default = UpstreamLimits()
    assert limits_for("openai:gpt-4o", limits, default) == UpstreamLimits(rps=5, max_concurrency=2)
    assert limits_for("openai:gpt-4o-mini", limits, default).rps == 1
    assert limits_for("host:api.example.com", limits, default).max_concurrency == 4
    assert limits_for("host:example.org", limits, default) is default
    path.write_text("openai:gpt-4o: {rsp: 5}\n")
    with pytest.raises(ValueError, match="openai:gpt-4o"):
        load_limits(path)


async def test_upstream_labels_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstreams_module, "MAX_UPSTREAM_LABELS", 2)
    upstreams = Upstreams()
    names = [name() for _ in range(3)]
    for upstream in names:
        await upstreams.call(upstream, Script(), kind="http")
    assert (
        sample("fanflow_upstream_calls_total", upstream=names[1], kind="http", outcome="success")
        == 1
    )
    assert (
        sample("fanflow_upstream_calls_total", upstream=names[2], kind="http", outcome="success")
        == 0
    )
    assert (
        sample("fanflow_upstream_calls_total", upstream="other", kind="http", outcome="success")
        >= 1
    )


async def test_idle_upstreams_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstreams_module, "MAX_UPSTREAMS", 3)
    upstreams = Upstreams()
    for _ in range(10):
        await upstreams.call(name(), Script(), kind="http")
    assert len(upstreams._upstreams) == 3


def test_retry_after_header_values() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    in_a_minute = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= (parse_retry_after(in_a_minute) or 0) <= 60


async def test_a_cancelled_probe_frees_its_slot() -> None:
    clock = FakeClock()
    upstream = name()
    upstreams = Upstreams(
        breaker=BreakerConfig(window_size=1, min_calls=1, half_open_probes=1), clock=clock
    )
    with pytest.raises(UpstreamFailure):
        await upstreams.call(
            upstream, Script(failure("timeout")), kind="llm", retry=RetryPolicy(max_attempts=1)
        )
    clock.advance(30)
    started = asyncio.Event()

    async def hangs() -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    probe = asyncio.create_task(upstreams.call(upstream, hangs, kind="llm"))
    await started.wait()
    with pytest.raises(UpstreamFailure, match="probe"):  # the one probe slot is taken
        await upstreams.call(upstream, Script(), kind="llm")
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert await upstreams.call(upstream, Script(), kind="llm") == "ok"
    assert upstreams.breaker_state(upstream) == "closed"
