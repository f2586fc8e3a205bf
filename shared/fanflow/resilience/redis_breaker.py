"""Circuit breakers shared by the fleet through Redis.

Each process still judges its own calls with its `CircuitBreaker` (the failure-rate and
slow-call window); when that window opens it, the process opens the upstream's breaker for
everyone: a Redis hash `{state, until, probes, ok, gen}` (no key: closed). Every process
asks it before a call — from a local copy at most `sync_s` old while it is closed, so an
open breaker stops the whole fleet within `sync_s`, without a round trip per call. Once
the open wait is over, half-open probes are admitted atomically, at most `half_open_probes`
for the whole fleet; all of them succeeding closes it, any failing opens it again, and a
round whose probes never report (their worker died) starts over after `probe_timeout_s`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fanflow.resilience.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    STATE_VALUES,
    BreakerConfig,
    CircuitBreaker,
)
from fanflow.resilience.redis_client import LUA_NOW, FleetRedis, FleetUnavailable

if TYPE_CHECKING:
    from prometheus_client import Gauge

__all__ = ["PROBE", "Decision", "SharedBreakers"]

PROBE = "probe"

CHECK = (
    LUA_NOW
    + """
local probes_max, probe_timeout, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'state', 'until', 'gen')
if not h[1] then return {'closed', '0', 0} end
local state, until_, gen = h[1], tonumber(h[2]), tonumber(h[3]) or 0
if state == 'open' and now < until_ then return {'open', tostring(until_ - now), gen} end
if state == 'open' or now >= until_ then
  -- the wait is over, or a round of probes never reported: a new round
  gen = gen + 1
  until_ = now + probe_timeout
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'until', until_, 'probes', 0, 'ok', 0,
    'gen', gen)
  redis.call('PEXPIRE', KEYS[1], math.ceil(probe_timeout + keep))
end
if tonumber(redis.call('HGET', KEYS[1], 'probes')) < probes_max then
  redis.call('HINCRBY', KEYS[1], 'probes', 1)
  return {'probe', '0', gen}
end
return {'half_open', tostring(until_ - now), gen}
"""
)

#: Lua (after LUA_NOW): `open(wait, keep, gen)` opens the breaker for `wait` ms as round
#: `gen`; the key outlives the wait by `keep` ms
_OPEN = """
local function open(wait, keep, gen)
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + wait, 'probes', 0, 'ok', 0,
    'gen', gen)
  redis.call('PEXPIRE', KEYS[1], math.ceil(wait + keep))
end
"""

OPEN_SCRIPT = (
    LUA_NOW
    + _OPEN
    + """
local wait, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local h = redis.call('HMGET', KEYS[1], 'state', 'until', 'gen')
if h[1] == 'open' and tonumber(h[2]) > now then return 0 end
open(wait, keep, (tonumber(h[3]) or 0) + 1)
return 1
"""
)

PROBE_RESULT = (
    LUA_NOW
    + _OPEN
    + """
local gen, ok, needed = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local wait, keep = tonumber(ARGV[4]), tonumber(ARGV[5])
local h = redis.call('HMGET', KEYS[1], 'state', 'gen')
if h[1] ~= 'half_open' or tonumber(h[2]) ~= gen then return 'stale' end
if ok == 0 then
  open(wait, keep, gen + 1)
  return 'open'
end
if redis.call('HINCRBY', KEYS[1], 'ok', 1) >= needed then
  redis.call('DEL', KEYS[1])
  return 'closed'
end
return 'half_open'
"""
)

RELEASE_PROBE = """
local h = redis.call('HMGET', KEYS[1], 'state', 'gen', 'probes')
if h[1] == 'half_open' and tonumber(h[2]) == tonumber(ARGV[1]) and tonumber(h[3]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'probes', -1)
  return 1
end
return 0
"""

#: how long a breaker's hash outlives its own deadline (ms), so stale keys go away
_KEEP_MS = 60_000


@dataclass(frozen=True)
class Decision:
    """What the fleet's breaker says of one call: `state` is closed, open, half_open (all
    probes taken: refused) or probe (admitted as one of the round's probes, `generation`)."""

    state: str
    remaining_s: float = 0.0
    generation: int = 0

    @property
    def refused(self) -> bool:
        return self.state in (OPEN, HALF_OPEN)


@dataclass
class _Copy:
    decision: Decision
    until: float


class SharedBreakers:
    def __init__(
        self,
        redis: FleetRedis,
        config: BreakerConfig,
        *,
        sync_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.config = config
        self.sync_s = sync_s
        self._clock = clock
        self._copies: dict[str, _Copy] = {}

    def _key(self, upstream: str) -> str:
        return self.redis.key("br", upstream)

    async def check(self, upstream: str) -> Decision:
        """Whether a call may go now; raises `FleetUnavailable` when Redis does not answer."""
        now = self._clock()
        copy = self._copies.get(upstream)
        if copy is not None and now < copy.until:
            return copy.decision
        state, remaining_ms, generation = await self.redis.run(
            CHECK,
            [self._key(upstream)],
            [self.config.half_open_probes, self.config.probe_timeout_s * 1000, _KEEP_MS],
        )
        state = state.decode() if isinstance(state, bytes) else str(state)
        decision = Decision(state, float(remaining_ms) / 1000, int(generation))
        if state == PROBE:
            self._copies.pop(upstream, None)  # the next call asks again
        elif state == OPEN:  # refused until its wait is over, without asking
            self._copies[upstream] = _Copy(decision, now + max(decision.remaining_s, 0.001))
        else:
            self._copies[upstream] = _Copy(decision, now + self.sync_s)
        if len(self._copies) > 1000:
            self._copies.pop(next(iter(self._copies)))
        return decision

    async def open(self, upstream: str) -> None:
        """This process's window says the upstream is failing: open it for everyone."""
        await self.redis.run(
            OPEN_SCRIPT, [self._key(upstream)], [self.config.open_wait_s * 1000, _KEEP_MS]
        )
        now = self._clock()
        self._copies[upstream] = _Copy(
            Decision(OPEN, self.config.open_wait_s), now + self.config.open_wait_s
        )

    async def probed(self, upstream: str, decision: Decision, *, failure: bool) -> str:
        """The outcome of a probe the fleet admitted; the state it left (or "stale")."""
        result = await self.redis.run(
            PROBE_RESULT,
            [self._key(upstream)],
            [
                decision.generation,
                0 if failure else 1,
                self.config.half_open_probes,
                self.config.open_wait_s * 1000,
                _KEEP_MS,
            ],
        )
        state = result.decode() if isinstance(result, bytes) else str(result)
        self._copies.pop(upstream, None)
        return state

    async def release_probe(self, upstream: str, decision: Decision) -> None:
        """A probe that said nothing of the upstream (cancelled, or failed before
        reaching it) gives its place back to the round."""
        if decision.state != PROBE:
            return
        with contextlib.suppress(FleetUnavailable):
            await self.redis.run(RELEASE_PROBE, [self._key(upstream)], [decision.generation])

    async def admit(self, upstream: str, gauge: Gauge) -> Decision | None:
        """`check`, published in the upstream's state gauge; None while Redis does not
        answer (the process's own breaker decides alone)."""
        if not self.redis.available:
            return None
        try:
            decision = await self.check(upstream)
        except FleetUnavailable:
            return None
        gauge.set(STATE_VALUES[HALF_OPEN if decision.state == PROBE else decision.state])
        return decision

    async def report(
        self,
        upstream: str,
        breaker: CircuitBreaker,
        gauge: Gauge,
        decision: Decision,
        *,
        failure: bool,
        was: str,
    ) -> None:
        """After a call the fleet admitted: a probe's outcome, or this process's own
        breaker (`was` its state before the call) having just opened, told to the fleet.
        The fleet's breaker decides from then on, so the process's is reset to closed."""
        try:
            if decision.state == PROBE:
                state = await self.probed(upstream, decision, failure=failure)
                if state in (OPEN, CLOSED):
                    gauge.set(STATE_VALUES[state])
                if breaker.state == OPEN:
                    breaker.reset()
            elif was != OPEN and breaker.state == OPEN:
                await self.open(upstream)
                breaker.reset()
                gauge.set(STATE_VALUES[OPEN])
        except FleetUnavailable:
            pass  # the process's breaker stays as it is: the fallback
