"""Fleet-wide limits in Redis: requests per second and minute, tokens per minute,
concurrency; per upstream, and per app and end user on it.

One acquire is one Lua script (atomic, one round trip). Rates are GCRA: each scope keeps a
theoretical arrival time per kind (`rps`, `rpm`, `tpm`) in one hash; a call that fits
within the wait bound reserves its place and learns how long to sleep before going (fair in
arrival order, no polling). Concurrency is a sorted set of leases scored by their expiry,
so the slots of a killed worker come back once its leases expire (`lease_ttl_s`, longer
than any call). A call whose wait would pass the bound reserves nothing: the caller raises
the scheduler's retry-later signal instead of sleeping on a worker's task slot.

Tokens are estimated before the call (`estimate_tokens`) and the estimate corrected on
release with the usage the answer reported (a failed call gives its estimate back).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fanflow.resilience.failures import UpstreamFailure
from fanflow.resilience.ratelimit import UpstreamLimits
from fanflow.resilience.redis_client import LUA_NOW, FleetRedis, FleetUnavailable

__all__ = ["BudgetDeferred", "CallKeys", "FleetLimiter", "Lease", "estimate_tokens"]

#: per scope in ARGV: max_concurrency, rps, burst, rpm, rpm_burst, tpm, tpm_burst
_PER_SCOPE = 7
_KINDS = ("concurrency", "rps", "rpm", "tpm")

ACQUIRE = (
    LUA_NOW
    + """
local lease, max_wait, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, n = tonumber(ARGV[4]), tonumber(ARGV[5])
for i = 1, n do
  local limit = tonumber(ARGV[5 + (i - 1) * 7 + 1])
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2 * i], '-inf', now)
    if redis.call('ZCARD', KEYS[2 * i]) >= limit then
      return {2, '0', i, 'concurrency'}
    end
  end
end
local function gcra(tat, per_minute_ms, rate, burst, cost)
  local interval = per_minute_ms / rate
  local start = math.max(tonumber(tat) or now, now)
  local new_tat = start + cost * interval
  return new_tat, math.max(0, new_tat - burst * interval - now)
end
local wait, worst, worst_kind = 0, 0, ''
local plans = {}
for i = 1, n do
  local b = 5 + (i - 1) * 7
  local tats = redis.call('HMGET', KEYS[2 * i - 1], 'rps', 'rpm', 'tpm')
  local specs = {
    {'rps', 1000, tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), 1, tats[1]},
    {'rpm', 60000, tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5]), 1, tats[2]},
    {'tpm', 60000, tonumber(ARGV[b + 6]), tonumber(ARGV[b + 7]), tokens, tats[3]},
  }
  local new = {}
  local latest = now
  for j = 1, 3 do
    local s = specs[j]
    local tat = tonumber(s[6])
    if tat and tat > latest then latest = tat end
    if s[3] > 0 then
      local new_tat, w = gcra(s[6], s[2], s[3], s[4], s[5])
      new[#new + 1] = s[1]
      new[#new + 1] = new_tat
      if new_tat > latest then latest = new_tat end
      if w > wait then wait, worst, worst_kind = w, i, s[1] end
    end
  end
  plans[i] = {new, latest}
end
if wait > max_wait then
  return {0, tostring(wait), worst, worst_kind}
end
for i = 1, n do
  local new, latest = plans[i][1], plans[i][2]
  if #new > 0 then
    redis.call('HSET', KEYS[2 * i - 1], unpack(new))
    redis.call('PEXPIRE', KEYS[2 * i - 1], math.ceil(latest - now) + 2000)
  end
  if tonumber(ARGV[5 + (i - 1) * 7 + 1]) > 0 then
    redis.call('ZADD', KEYS[2 * i], now + wait + ttl, lease)
    redis.call('PEXPIRE', KEYS[2 * i], math.ceil(max_wait + ttl) + 2000)
  end
end
return {1, tostring(wait), 0, ''}
"""
)

RELEASE = (
    LUA_NOW
    + """
local lease, delta, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, n do
  redis.call('ZREM', KEYS[2 * i], lease)
  local interval = tonumber(ARGV[3 + i])
  if interval > 0 and delta ~= 0 then
    local tat = tonumber(redis.call('HGET', KEYS[2 * i - 1], 'tpm'))
    if tat then
      local new
      if delta > 0 then new = math.max(tat, now) + delta * interval
      else new = math.max(tat + delta * interval, now) end
      redis.call('HSET', KEYS[2 * i - 1], 'tpm', new)
      local want = math.ceil(new - now) + 2000
      if redis.call('PTTL', KEYS[2 * i - 1]) < want then
        redis.call('PEXPIRE', KEYS[2 * i - 1], want)
      end
    end
  end
end
return 1
"""
)


@dataclass(frozen=True)
class CallKeys:
    """Who a call is for, for the `per_app` and `per_user` limits (None: unknown)."""

    app: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class Lease:
    """A granted call: hand it back with `FleetLimiter.release` once the call is over."""

    lease_id: str
    keys: tuple[str, ...]
    tokens: float
    #: ms of budget per token of each scope's tpm (0: no tpm there), for the correction
    tpm_intervals: tuple[float, ...]
    #: leases to hand back or tokens to correct: a release is a round trip only then
    needs_release: bool = True


class BudgetDeferred(Exception):
    """No room within the wait bound: come back in `wait_s`."""

    def __init__(self, wait_s: float, scope: str, kind: str) -> None:
        super().__init__(f"the fleet-wide {kind} limit of {scope} has no room for {wait_s:.1f} s")
        self.wait_s = wait_s
        self.scope = scope
        self.kind = kind

    def failure(self, upstream: str, max_wait_s: float) -> UpstreamFailure:
        """The scheduler's retry-later signal (as for an upstream's own long Retry-After),
        so no worker sleeps on a task slot waiting for budget; the wait is past the
        in-worker bound, so the worker does not retry it itself."""
        return UpstreamFailure(
            f"upstream {upstream}: {self}; retry later",
            reason="status_429",
            retryable=True,
            retry_after_s=max(self.wait_s, max_wait_s + 0.001),
            error_type="RateLimitedError",
        )


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """A call's tokens before it is made: ~4 characters a token of its messages, plus the
    completion it may produce (`max_tokens`, when the node sets it)."""
    text = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            text += len(content)
        elif isinstance(content, list):
            text += sum(
                len(str(part.get("text") or "")) for part in content if isinstance(part, Mapping)
            )
        text += 16  # role and framing
    completion = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    return math.ceil(text / 4) + (int(completion) if isinstance(completion, int | float) else 0)


class FleetLimiter:
    """Acquire and release fleet-wide budget for one call."""

    def __init__(
        self,
        redis: FleetRedis,
        *,
        lease_ttl_s: float = 120.0,
        poll_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.redis = redis
        self.lease_ttl_s = lease_ttl_s
        self.poll_s = poll_s
        self._clock = clock
        self._sleep = sleep

    def scopes(
        self, upstream: str, limits: UpstreamLimits, keys: CallKeys | None
    ) -> list[tuple[str, list[str], UpstreamLimits]]:
        """(scope name, its two Redis keys, its limits): the upstream's own, then its app's
        and its end user's where the config has `per_app` / `per_user`."""
        found: list[tuple[str, tuple[str, ...], UpstreamLimits]] = [
            (f"upstream {upstream}", ("u", upstream), limits)
        ]
        app = keys.app if keys else None
        user = keys.user if keys else None
        if app and limits.per_app is not None:
            found.append((f"app {app} on {upstream}", ("a", app, "u", upstream), limits.per_app))
        if app and user and limits.per_user is not None:
            found.append(
                (
                    f"user {user} of app {app} on {upstream}",
                    ("e", app, user, "u", upstream),
                    limits.per_user,
                )
            )
        return [
            (
                name,
                [self.redis.key("rl", *part, "rate"), self.redis.key("rl", *part, "lease")],
                scope,
            )
            for name, part, scope in found
        ]

    async def acquire(
        self,
        upstream: str,
        limits: UpstreamLimits,
        *,
        keys: CallKeys | None = None,
        tokens: float = 0.0,
        max_wait_s: float = 5.0,
    ) -> Lease:
        """Wait (at most `max_wait_s`) for room in every scope, then hold it.

        Raises `BudgetDeferred` when there is none within the bound (nothing reserved) and
        `FleetUnavailable` when Redis does not answer.
        """
        scopes = self.scopes(upstream, limits, keys)
        names = [key for _, pair, _ in scopes for key in pair]
        lease_id = uuid.uuid4().hex
        args: list[Any] = [
            lease_id,
            max_wait_s * 1000,
            self.lease_ttl_s * 1000,
            tokens,
            len(scopes),
        ]
        tpm_intervals: list[float] = []
        for _, _, scope in scopes:
            tpm_burst = scope.tpm_burst or (scope.tpm / 10 if scope.tpm else 0)
            args += [
                scope.max_concurrency or 0,
                scope.rps or 0,
                scope.burst,
                scope.rpm or 0,
                scope.rpm_burst,
                scope.tpm or 0,
                max(tpm_burst, 1) if scope.tpm else 0,
            ]
            tpm_intervals.append(60_000 / scope.tpm if scope.tpm else 0.0)
        started = self._clock()
        while True:
            status, wait_ms, index, kind = await self.redis.run(ACQUIRE, names, args)
            wait_s = float(wait_ms) / 1000
            if int(status) == 1:
                if wait_s > 0:
                    await self._sleep(wait_s)
                held = any(s.max_concurrency for _, _, s in scopes) or any(tpm_intervals)
                return Lease(lease_id, tuple(names), tokens, tuple(tpm_intervals), bool(held))
            scope_name = scopes[int(index) - 1][0]
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if int(status) == 0:
                raise BudgetDeferred(wait_s, scope_name, kind)
            # concurrency full: poll until the bound
            if self._clock() - started + self.poll_s > max_wait_s:
                raise BudgetDeferred(max_wait_s, scope_name, kind)
            await self._sleep(self.poll_s)

    async def release(self, lease: Lease, *, used_tokens: float | None) -> None:
        """Give the concurrency slots back and correct the token estimate with the usage
        the answer reported (`None`: the call failed, its estimate comes back)."""
        if not lease.needs_release:
            return
        delta = (used_tokens if used_tokens is not None else 0.0) - lease.tokens
        args: list[Any] = [lease.lease_id, delta, len(lease.tpm_intervals), *lease.tpm_intervals]
        with contextlib.suppress(FleetUnavailable):  # else the leases expire on their own
            await self.redis.run(RELEASE, lease.keys, args)
