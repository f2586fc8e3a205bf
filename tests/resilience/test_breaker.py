"""The circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

import pytest

from fanflow.resilience.breaker import CLOSED, HALF_OPEN, OPEN, BreakerConfig, CircuitBreaker
from tests.resilience.clock import FakeClock

CONFIG = BreakerConfig(
    window_size=10,
    min_calls=4,
    failure_rate=0.5,
    slow_call_s=5.0,
    slow_call_rate=0.75,
    open_wait_s=30.0,
    half_open_probes=2,
    probe_timeout_s=10.0,
)


def breaker(clock: FakeClock, changes: list[str] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        CONFIG, clock=clock, on_change=changes.append if changes is not None else None
    )


def call(b: CircuitBreaker, *, failure: bool = False, duration_s: float = 0.1) -> None:
    permit = b.acquire()
    assert permit is not None, f"refused in state {b.state}"
    b.record(permit, failure=failure, duration_s=duration_s)


def opened(clock: FakeClock) -> CircuitBreaker:
    b = breaker(clock)
    for _ in range(CONFIG.min_calls):
        call(b, failure=True)
    assert b.state == OPEN
    return b


def test_opens_at_the_failure_rate_once_min_calls_are_seen() -> None:
    b = breaker(FakeClock())
    call(b, failure=True)
    call(b, failure=True)
    call(b, failure=True)
    assert b.state == CLOSED  # 3 of 3 failed, but fewer than min_calls
    call(b)
    assert b.state == OPEN  # 3 of 4 >= 50 %


def test_stays_closed_below_the_failure_rate() -> None:
    b = breaker(FakeClock())
    for failure in [True, False, False, False, True, False, False, False, False, False]:
        call(b, failure=failure)
    assert b.state == CLOSED  # 2 of 10
    # the window slides: old outcomes drop out and recent failures weigh
    for _ in range(3):
        call(b, failure=True)
    assert b.state == CLOSED  # 4 of the last 10
    call(b, failure=True)
    assert b.state == OPEN  # 5 of the last 10


def test_opens_at_the_slow_call_rate_even_when_calls_succeed() -> None:
    b = breaker(FakeClock())
    call(b, duration_s=0.1)
    call(b, duration_s=5.0)  # slow: >= slow_call_s
    call(b, duration_s=9.0)
    assert b.state == CLOSED  # fewer than min_calls
    call(b, duration_s=6.0)
    assert b.state == OPEN  # 3 of 4 slow = 75 %, no failure at all


def test_the_duration_defaults_to_the_clock() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(4):
        permit = b.acquire()
        assert permit is not None
        clock.advance(6.0)
        b.record(permit, failure=False)
    assert b.state == OPEN


def test_open_refuses_until_the_wait_is_over_then_half_open() -> None:
    clock = FakeClock()
    b = opened(clock)
    assert b.acquire() is None
    assert b.open_remaining_s() == pytest.approx(30.0)
    clock.advance(29.9)
    assert b.acquire() is None and b.state == OPEN
    clock.advance(0.1)
    assert b.state == HALF_OPEN
    assert b.open_remaining_s() == 0.0


def test_half_open_admits_at_most_k_probes() -> None:
    clock = FakeClock()
    b = opened(clock)
    clock.advance(30)
    first, second = b.acquire(), b.acquire()
    assert first is not None and second is not None
    assert first.probe_id is not None and second.probe_id is not None
    assert b.acquire() is None  # K = 2 probes in flight
    b.release(first)  # a cancelled probe frees its slot
    third = b.acquire()
    assert third is not None
    assert b.acquire() is None


def test_closes_after_k_successful_probes() -> None:
    clock = FakeClock()
    changes: list[str] = []
    b = breaker(clock, changes)
    for _ in range(4):
        call(b, failure=True)
    clock.advance(30)
    call(b)
    assert b.state == HALF_OPEN
    call(b)
    assert b.state == CLOSED
    assert changes == [OPEN, HALF_OPEN, CLOSED]
    # a fresh window: the old failures are forgotten
    call(b, failure=True)
    assert b.state == CLOSED


def test_a_failed_probe_reopens() -> None:
    clock = FakeClock()
    b = opened(clock)
    clock.advance(30)
    call(b)
    call(b, failure=True)
    assert b.state == OPEN
    assert b.open_remaining_s() == pytest.approx(30.0)  # a new wait starts


def test_a_probe_that_does_not_finish_in_time_counts_as_failed() -> None:
    clock = FakeClock()
    b = opened(clock)
    clock.advance(30)
    hanging = b.acquire()
    assert hanging is not None
    clock.advance(9.9)
    assert b.state == HALF_OPEN
    clock.advance(0.1)
    assert b.state == OPEN  # nobody had to report it
    # its late success changes nothing
    b.record(hanging, failure=False)
    assert b.state == OPEN


def test_a_slow_probe_that_reports_late_counts_as_failed() -> None:
    clock = FakeClock()
    b = opened(clock)
    clock.advance(30)
    probe = b.acquire()
    assert probe is not None
    b.record(probe, failure=False, duration_s=12.0)
    assert b.state == OPEN


def test_outcomes_of_calls_admitted_before_a_transition_are_ignored() -> None:
    clock = FakeClock()
    b = breaker(clock)
    early = b.acquire()
    assert early is not None
    for _ in range(4):
        call(b, failure=True)
    clock.advance(30)
    assert b.state == HALF_OPEN
    b.record(early, failure=True)  # from the closed period: not a probe
    assert b.state == HALF_OPEN


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="min_calls"):
        BreakerConfig(window_size=5, min_calls=6)
    with pytest.raises(ValueError, match="half_open_probes"):
        BreakerConfig(half_open_probes=0)
