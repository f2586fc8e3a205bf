"""Every external call goes through `Upstreams.call`: limits, breaker, short retries, metrics.

An upstream is a bounded name (`openai:gpt-4o`, `host:api.example.com`), never a run id.
Per upstream, one call:

1. fails fast with `UpstreamFailure(reason="breaker_open")` when its breaker is open;
2. waits for a concurrency slot and its rate (`fanflow_rate_limit_wait_seconds`);
3. runs `attempt()` — ONE request, which raises `UpstreamFailure` for classified failures —
   and records the outcome and latency in the breaker and the metrics;
4. retries in the worker, with tenacity, the failures `RetryPolicy.retry_on` names, after an
   exponential backoff or the server's Retry-After. A wait longer than
   `max_in_worker_wait_s` is not slept: the failure goes back to the scheduler
   (`retryable=True`, `retry_after_s`), which re-queues the task when the node's retry
   config allows it.

Limits are per process (`fanflow.resilience.ratelimit`) unless a `FleetLimiter` is given
(`FANFLOW_REDIS_URL`): then they are held fleet-wide in Redis
(`fanflow.resilience.redis_limits`), with the per-process ones as the fallback for calls
made while Redis does not answer. A call whose fleet-wide budget has no room within
`max_in_worker_wait_s` fails with `reason="status_429"` and `retry_after_s`: the
scheduler's retry later, as for an upstream's own long Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from fanflow.metrics import (
    CIRCUIT_BREAKER_STATE,
    FLOW_CONTROL_DEFERRED,
    RATE_LIMIT_WAIT,
    UPSTREAM_CALL_DURATION,
    UPSTREAM_CALLS,
    UPSTREAM_RETRIES,
)
from fanflow.resilience.breaker import CLOSED, OPEN, STATE_VALUES, BreakerConfig, CircuitBreaker
from fanflow.resilience.failures import RetryPolicy, UpstreamFailure, parse_retry_after, wait_s
from fanflow.resilience.fleet import fleet_from_settings
from fanflow.resilience.ratelimit import Limiter, UpstreamLimits, limits_for, load_limits
from fanflow.resilience.redis_breaker import Decision, SharedBreakers
from fanflow.resilience.redis_client import LOCAL, FleetUnavailable, set_mode
from fanflow.resilience.redis_limits import BudgetDeferred, CallKeys, FleetLimiter, Lease

if TYPE_CHECKING:
    from prometheus_client import Gauge

    from fanflow.settings import Settings

__all__ = ["RetryPolicy", "UpstreamFailure", "Upstreams", "parse_retry_after"]

T = TypeVar("T")

#: failure reasons that say the upstream is unwell; the breaker counts only these
#: what counts against a breaker; a 429 does not (the upstream works, it asks us to slow
#: down, which the rate limiter does), nor does a 4xx or a malformed answer
BREAKER_FAILURES = frozenset({"timeout", "connect", "status_5xx"})
#: distinct upstream label values per process; later names share the label "other"
MAX_UPSTREAM_LABELS = 200
#: upstreams whose state is kept; the least recently used idle ones are forgotten
MAX_UPSTREAMS = 1000


@dataclass(frozen=True)
class _Budget(Generic[T]):
    """What fleet-wide limits need to know of one call."""

    tokens: float
    keys: CallKeys | None
    usage_of: Callable[[T], float | None] | None
    max_wait_s: float


@dataclass
class _Upstream:
    breaker: CircuitBreaker
    limiter: Limiter
    label: str
    gauge: Gauge
    in_flight: int = 0


class Upstreams:
    """Per-process breakers and limits, keyed by upstream name ("openai:gpt-4o", "host:api.example.com")."""

    def __init__(
        self,
        *,
        breaker: BreakerConfig | None = None,
        limits: Mapping[str, UpstreamLimits] | None = None,
        default_limits: UpstreamLimits | None = None,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        fleet: FleetLimiter | None = None,
        shared_breakers: SharedBreakers | None = None,
    ) -> None:
        self.breaker_config = breaker or BreakerConfig()
        #: fleet-wide limits (Redis); None: per process only
        self.fleet = fleet
        #: breakers shared by the fleet (Redis); None: per process only
        self.shared_breakers = shared_breakers
        if fleet is None and shared_breakers is None:
            set_mode(LOCAL)
        self.limits = dict(limits or {})
        self.default_limits = default_limits or UpstreamLimits()
        self.retry = retry or RetryPolicy()
        self._clock = clock
        self._sleep = sleep
        self._upstreams: OrderedDict[str, _Upstream] = OrderedDict()
        self._labels: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> Upstreams:
        """Breaker defaults and limits from `FANFLOW_BREAKER_*`, `FANFLOW_UPSTREAM_*`."""
        breaker = BreakerConfig(
            window_size=settings.breaker_window_size,
            min_calls=settings.breaker_min_calls,
            failure_rate=settings.breaker_failure_rate,
            slow_call_s=settings.breaker_slow_call_s,
            slow_call_rate=settings.breaker_slow_call_rate,
            open_wait_s=settings.breaker_open_wait_s,
            half_open_probes=settings.breaker_half_open_probes,
            probe_timeout_s=settings.breaker_probe_timeout_s,
        )
        limits = load_limits(settings.upstream_limits_file) if settings.upstream_limits_file else {}
        default = UpstreamLimits(
            max_concurrency=settings.upstream_max_concurrency, rps=settings.upstream_rps
        )
        fleet, shared = fleet_from_settings(settings, breaker)
        return cls(
            breaker=breaker,
            limits=limits,
            default_limits=default,
            fleet=fleet,
            shared_breakers=shared,
        )

    async def call(
        self,
        upstream: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        kind: str,
        retry: RetryPolicy | None = None,
        tokens: float = 0.0,
        keys: CallKeys | None = None,
        usage_of: Callable[[T], float | None] | None = None,
    ) -> T:
        """Run `attempt` against `upstream` under its breaker and limits, retrying per
        `retry` (default: this object's policy). Raises the last `UpstreamFailure`.

        Fleet-wide only: `tokens` is the estimate a tokens-per-minute limit charges before
        the call, `usage_of(result)` the tokens the answer reports (the correction);
        `keys` names the app and end user for `per_app` / `per_user` limits."""
        policy = retry or self.retry
        entry = self._entry(upstream)

        def count_retry(state: RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome else None
            reason = getattr(failure, "reason", "error")
            UPSTREAM_RETRIES.labels(entry.label, kind, reason).inc()

        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(1, policy.max_attempts)),
            retry=retry_if_exception(policy.retries),
            wait=lambda state: wait_s(state, policy),
            sleep=self._sleep,
            before_sleep=count_retry,
            reraise=True,
        )
        entry.in_flight += 1
        try:
            result: T = await retrying(
                self._attempt_once,
                upstream,
                entry,
                attempt,
                kind,
                _Budget(tokens, keys, usage_of, policy.max_in_worker_wait_s),
            )
            return result
        finally:
            entry.in_flight -= 1

    async def aclose(self) -> None:
        """Close the Redis client of fleet-wide state, if any."""
        if self.fleet is not None:
            await self.fleet.redis.aclose()
        if self.shared_breakers is not None:
            await self.shared_breakers.redis.aclose()

    def current_rps(self, upstream: str) -> float | None:
        """The rate `upstream` is held to now (lowered after a 429), None when unlimited."""
        entry = self._upstreams.get(upstream)
        limits = limits_for(upstream, self.limits, self.default_limits)
        if entry is None or entry.limiter.bucket is None:
            return limits.rps
        return entry.limiter.bucket.rps

    def breaker_state(self, upstream: str) -> str:
        """The state of `upstream`'s breaker: "closed", "open" or "half_open"."""
        entry = self._upstreams.get(upstream)
        return entry.breaker.state if entry is not None else CLOSED

    async def _attempt_once(
        self,
        upstream: str,
        entry: _Upstream,
        attempt: Callable[[], Awaitable[T]],
        kind: str,
        budget: _Budget[T],
    ) -> T:
        if entry.breaker.state == OPEN:  # fail fast, before waiting for a slot
            raise self._refused(upstream, entry, kind)
        decision = await self._fleet_breaker(upstream, entry, kind)
        limits = entry.limiter.limits
        if self.fleet is not None and limits.fleet_wide and self.fleet.redis.available:
            started = self._clock()
            try:
                lease = await self.fleet.acquire(
                    upstream,
                    limits,
                    keys=budget.keys,
                    tokens=budget.tokens,
                    max_wait_s=budget.max_wait_s,
                )
            except BudgetDeferred as deferred:
                await self._release_probe(upstream, decision)  # it never went
                raise self._deferred(upstream, entry, kind, deferred, budget.max_wait_s) from None
            except FleetUnavailable:
                pass  # this call under the per-process limits (the mode is logged)
            else:
                RATE_LIMIT_WAIT.labels(entry.label, kind).observe(self._clock() - started)
                return await self._leased(upstream, entry, attempt, kind, budget, lease, decision)
        async with entry.limiter.slot() as waited_s:
            RATE_LIMIT_WAIT.labels(entry.label, kind).observe(waited_s)
            return await self._guarded(upstream, entry, attempt, kind, decision)

    async def _leased(
        self,
        upstream: str,
        entry: _Upstream,
        attempt: Callable[[], Awaitable[T]],
        kind: str,
        budget: _Budget[T],
        lease: Lease,
        decision: Decision | None,
    ) -> T:
        assert self.fleet is not None
        used: float | None = None
        try:
            result = await self._guarded(upstream, entry, attempt, kind, decision)
            reported = budget.usage_of(result) if budget.usage_of is not None else None
            used = reported if reported is not None else budget.tokens  # no usage: the estimate
            return result
        finally:
            await asyncio.shield(self.fleet.release(lease, used_tokens=used))

    async def _fleet_breaker(self, upstream: str, entry: _Upstream, kind: str) -> Decision | None:
        """The fleet's breaker for this call (None: none shared, or Redis not answering:
        the process's own breaker decides alone)."""
        if self.shared_breakers is None:
            return None
        decision = await self.shared_breakers.admit(upstream, entry.gauge)
        if decision is not None and decision.refused:
            raise self._refused(upstream, entry, kind, fleet=decision)
        return decision

    async def _tell_fleet(
        self, upstream: str, entry: _Upstream, decision: Decision | None, *, failure: bool, was: str
    ) -> None:
        if self.shared_breakers is not None and decision is not None:
            await self.shared_breakers.report(
                upstream, entry.breaker, entry.gauge, decision, failure=failure, was=was
            )

    async def _release_probe(self, upstream: str, decision: Decision | None) -> None:
        if self.shared_breakers is not None and decision is not None:
            await self.shared_breakers.release_probe(upstream, decision)

    async def _guarded(
        self,
        upstream: str,
        entry: _Upstream,
        attempt: Callable[[], Awaitable[T]],
        kind: str,
        decision: Decision | None = None,
    ) -> T:
        """One attempt under the breaker, its outcome recorded (and told to the fleet)."""
        permit = entry.breaker.acquire()
        if permit is None:
            raise self._refused(upstream, entry, kind)
        was = entry.breaker.state
        started = self._clock()
        try:
            result = await attempt()
        except UpstreamFailure as failure:
            duration = self._clock() - started
            counts = failure.reason in BREAKER_FAILURES
            entry.breaker.record(permit, failure=counts, duration_s=duration)
            if failure.reason == "status_429":
                entry.limiter.throttled()
            self._observe(entry, kind, failure.reason, duration)
            # a probe answered with a 429 or 4xx found the upstream working: that counts as
            # a successful probe, as it would not count against the breaker
            await self._tell_fleet(upstream, entry, decision, failure=counts, was=was)
            raise
        except Exception:
            entry.breaker.release(permit)
            self._observe(entry, kind, "error", self._clock() - started)
            await self._release_probe(upstream, decision)
            raise
        except BaseException:  # cancelled: says nothing about the upstream
            entry.breaker.release(permit)
            await asyncio.shield(self._release_probe(upstream, decision))
            raise
        duration = self._clock() - started
        entry.breaker.record(permit, failure=False, duration_s=duration)
        entry.limiter.succeeded()
        self._observe(entry, kind, "success", duration)
        await self._tell_fleet(upstream, entry, decision, failure=False, was=was)
        return result

    def _deferred(
        self,
        upstream: str,
        entry: _Upstream,
        kind: str,
        deferred: BudgetDeferred,
        max_wait_s: float,
    ) -> UpstreamFailure:
        FLOW_CONTROL_DEFERRED.labels(entry.label, kind, deferred.kind).inc()
        UPSTREAM_CALLS.labels(entry.label, kind, "deferred").inc()
        return deferred.failure(upstream, max_wait_s)

    def _refused(
        self, upstream: str, entry: _Upstream, kind: str, *, fleet: Decision | None = None
    ) -> UpstreamFailure:
        UPSTREAM_CALLS.labels(entry.label, kind, "breaker_open").inc()
        if fleet is not None:
            remaining = fleet.remaining_s if fleet.state == OPEN else 0.0
        else:
            remaining = entry.breaker.open_remaining_s()
        when = f"for {remaining:.0f} s more" if remaining else "while its probe calls run"
        if fleet is not None:
            when += " (shared by the fleet)"
        # retryable once the breaker has waited: a node with retries comes back after the
        # open period (the scheduler delays it, nobody sleeps); a node without retries goes
        # straight to its error strategy, e.g. a fail-branch to a second model
        return UpstreamFailure(
            f"upstream {upstream} is failing: its circuit breaker is open and refuses calls {when}",
            reason="breaker_open",
            retryable=True,
            retry_after_s=remaining or None,
            error_type="CircuitOpenError",
        )

    def _observe(self, entry: _Upstream, kind: str, outcome: str, duration_s: float) -> None:
        UPSTREAM_CALLS.labels(entry.label, kind, outcome).inc()
        UPSTREAM_CALL_DURATION.labels(entry.label, kind).observe(duration_s)

    def _entry(self, upstream: str) -> _Upstream:
        entry = self._upstreams.get(upstream)
        if entry is not None:
            self._upstreams.move_to_end(upstream)
            return entry
        label = self._label(upstream)
        gauge = CIRCUIT_BREAKER_STATE.labels(label)
        gauge.set(STATE_VALUES[CLOSED])
        entry = _Upstream(
            breaker=CircuitBreaker(
                self.breaker_config,
                clock=self._clock,
                on_change=lambda state: gauge.set(STATE_VALUES[state]),
            ),
            limiter=Limiter(
                limits_for(upstream, self.limits, self.default_limits),
                clock=self._clock,
                sleep=self._sleep,
            ),
            label=label,
            gauge=gauge,
        )
        self._upstreams[upstream] = entry
        self._forget_idle()
        return entry

    def _forget_idle(self) -> None:
        # templated URLs can name endless hosts: keep memory bounded, but never drop an
        # upstream with calls in flight (its limits hold them) or with an unclosed breaker
        excess = len(self._upstreams) - MAX_UPSTREAMS
        for name in list(self._upstreams)[:-1]:  # oldest first, never the newest
            if excess <= 0:
                break
            entry = self._upstreams[name]
            if entry.in_flight == 0 and entry.breaker.state == CLOSED:
                del self._upstreams[name]
                excess -= 1

    def _label(self, upstream: str) -> str:
        if upstream in self._labels or len(self._labels) < MAX_UPSTREAM_LABELS:
            self._labels.add(upstream)
            return upstream
        return "other"
