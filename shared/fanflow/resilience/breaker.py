"""A circuit breaker per upstream: pure logic, no I/O, an injectable clock.

Closed: every call goes through; the outcomes of the last `window_size` calls are kept and,
once there are `min_calls` of them, the breaker opens when the share of failures reaches
`failure_rate` or the share of slow calls (duration >= `slow_call_s`, failed or not) reaches
`slow_call_rate`. Open: calls are refused for `open_wait_s`. Half-open: at most
`half_open_probes` probe calls are let through; each must finish within `probe_timeout_s`
(one still running after that counts as failed); all succeeding closes the breaker, any
failure opens it again.

Why not a library: aiobreaker, purgatory, pybreaker and circuitbreaker count consecutive
failures only; none has a sliding failure-rate window, slow-call detection and bounded,
time-limited half-open probes together.

A caller takes a `Permit` before each call (`acquire`; None means refused) and hands it back
with the outcome (`record`) or, when the call says nothing about the upstream's health (it
was cancelled, or failed before reaching it), with `release`. Outcomes of calls admitted
before the last state change are ignored.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
#: the value of `fanflow_circuit_breaker_state` for each state
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

Clock = Callable[[], float]


@dataclass(frozen=True, kw_only=True)
class BreakerConfig:
    window_size: int = 50
    min_calls: int = 20
    failure_rate: float = 0.5
    slow_call_s: float = 30.0
    slow_call_rate: float = 0.8
    open_wait_s: float = 30.0
    half_open_probes: int = 3
    probe_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.window_size < 1 or not 1 <= self.min_calls <= self.window_size:
            raise ValueError("breaker: need window_size >= 1 and 1 <= min_calls <= window_size")
        if not (0 < self.failure_rate <= 1 and 0 < self.slow_call_rate <= 1):
            raise ValueError("breaker: failure_rate and slow_call_rate must be in (0, 1]")
        if self.half_open_probes < 1:
            raise ValueError("breaker: half_open_probes must be >= 1")


@dataclass(frozen=True)
class Permit:
    """Leave to call once; `probe` when admitted in half-open state."""

    generation: int
    started_at: float
    probe_id: int | None = None


class CircuitBreaker:
    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self._on_change = on_change
        self._state = CLOSED
        self._generation = 0
        #: closed state: (failed, slow) of the last `window_size` calls
        self._window: deque[tuple[bool, bool]] = deque(maxlen=self.config.window_size)
        self._opened_at = 0.0
        self._probe_ids = itertools.count()
        self._probes_in_flight: dict[int, float] = {}
        self._probes_admitted = 0
        self._probes_succeeded = 0

    @property
    def state(self) -> str:
        """The state now: an open breaker turns half-open once its wait is over."""
        self._advance(self._clock())
        return self._state

    def open_remaining_s(self) -> float:
        """How long an open breaker still refuses calls (0 when not open)."""
        now = self._clock()
        self._advance(now)
        if self._state != OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.config.open_wait_s - now)

    def acquire(self) -> Permit | None:
        """A permit to call now, or None when the breaker refuses the call."""
        now = self._clock()
        self._advance(now)
        if self._state == CLOSED:
            return Permit(self._generation, now)
        if self._state == OPEN or self._probes_admitted >= self.config.half_open_probes:
            return None
        probe_id = next(self._probe_ids)
        self._probes_admitted += 1
        self._probes_in_flight[probe_id] = now
        return Permit(self._generation, now, probe_id)

    def record(self, permit: Permit, *, failure: bool, duration_s: float | None = None) -> None:
        """The outcome of a permitted call; `failure` only for failures that count
        (timeouts, connection errors, 5xx, 429)."""
        now = self._clock()
        self._advance(now)
        if permit.generation != self._generation:
            return
        duration = now - permit.started_at if duration_s is None else duration_s
        if self._state == CLOSED:
            self._window.append((failure, duration >= self.config.slow_call_s))
            self._evaluate_window(now)
            return
        assert permit.probe_id is not None  # half-open: only probes have this generation
        self._probes_in_flight.pop(permit.probe_id, None)
        if failure or duration >= self.config.probe_timeout_s:
            self._transition(OPEN, now)
            return
        self._probes_succeeded += 1
        if self._probes_succeeded >= self.config.half_open_probes:
            self._transition(CLOSED, now)

    def release(self, permit: Permit) -> None:
        """Hand a permit back without an outcome (the call was cancelled or never
        reached the upstream): a probe slot becomes free again."""
        if (
            permit.generation == self._generation
            and permit.probe_id is not None
            and self._probes_in_flight.pop(permit.probe_id, None) is not None
        ):
            self._probes_admitted -= 1

    def reset(self) -> None:
        """Back to closed with an empty window (the fleet's shared breaker took over)."""
        self._transition(CLOSED, self._clock())

    def _advance(self, now: float) -> None:
        if self._state == OPEN and now >= self._opened_at + self.config.open_wait_s:
            self._transition(HALF_OPEN, now)
        if self._state == HALF_OPEN and any(
            now - started >= self.config.probe_timeout_s
            for started in self._probes_in_flight.values()
        ):
            self._transition(OPEN, now)  # a probe that hangs is a failed probe

    def _evaluate_window(self, now: float) -> None:
        calls = len(self._window)
        if calls < self.config.min_calls:
            return
        failures = sum(1 for failed, _ in self._window if failed)
        slow = sum(1 for _, is_slow in self._window if is_slow)
        if failures / calls >= self.config.failure_rate or slow / calls >= (
            self.config.slow_call_rate
        ):
            self._transition(OPEN, now)

    def _transition(self, state: str, now: float) -> None:
        self._state = state
        self._generation += 1
        self._window.clear()
        self._probes_in_flight.clear()
        self._probes_admitted = 0
        self._probes_succeeded = 0
        if state == OPEN:
            self._opened_at = now
        if self._on_change is not None:
            self._on_change(state)
