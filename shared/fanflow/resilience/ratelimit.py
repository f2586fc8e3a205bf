"""Per-upstream limits: at most `max_concurrency` calls at once and `rps` calls a second.

The rate is a GCRA token bucket (a reservation per call: no lock, fair in arrival order)
holding `burst` calls. It adapts AIMD-style: a 429 from the upstream halves the current
rate (never below `min_rps`), each success adds back `recovery_rps`, up to the configured
rate. An upstream without an `rps` has no bucket and nothing to adapt: there a 429 is only
retried after its Retry-After.

These limits are per process: with N workers an upstream sees up to N times these numbers.
With `FANFLOW_REDIS_URL` set, the same entries are held fleet-wide instead
(`fanflow.resilience.redis_limits`), which also knows requests per minute, tokens per
minute and keyed limits (`per_app`, `per_user`); this module stays the fallback while
Redis is unreachable (there, `rpm` lowers the rate to `rpm / 60` and `tpm` is not held).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class UpstreamLimits:
    """None: unlimited."""

    max_concurrency: int | None = None
    rps: float | None = None
    #: calls that may go at once after a quiet spell
    burst: int = 1
    #: the floor a run of 429s can push the rate down to; None: rps / 16
    min_rps: float | None = None
    #: rate regained per successful call after a 429; None: rps / 10
    recovery_rps: float | None = None
    #: fleet-wide only (Redis): calls a minute, spread evenly (`rpm_burst` at once)
    rpm: float | None = None
    rpm_burst: int = 1
    #: fleet-wide only (Redis): tokens a minute, estimated from the prompt before the call
    #: and corrected with the usage the answer reports; `tpm_burst` tokens may go at once
    #: (None: a tenth of a minute's worth)
    tpm: float | None = None
    tpm_burst: float | None = None
    #: fleet-wide only (Redis): the same kinds of limit for each app, and for each end user
    #: of an app, on this upstream
    per_app: UpstreamLimits | None = None
    per_user: UpstreamLimits | None = None

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1 (or unset for no limit)")
        for name in ("rps", "rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 (or unset for no limit)")
        if self.burst < 1 or self.rpm_burst < 1:
            raise ValueError("burst and rpm_burst must be >= 1")
        if self.tpm_burst is not None and self.tpm_burst <= 0:
            raise ValueError("tpm_burst must be > 0")

    @property
    def local_rps(self) -> float | None:
        """The rate one process holds itself to without Redis: the lower of `rps` and
        `rpm / 60`."""
        rates = [r for r in (self.rps, self.rpm / 60 if self.rpm else None) if r]
        return min(rates) if rates else None

    @property
    def fleet_wide(self) -> bool:
        """Anything for the fleet-wide limiter to hold."""
        return bool(
            self.max_concurrency
            or self.rps
            or self.rpm
            or self.tpm
            or self.per_app is not None
            or self.per_user is not None
        )


class TokenBucket:
    """GCRA: each call reserves the next free slot and learns how long to wait for it."""

    def __init__(self, limits: UpstreamLimits, *, clock: Clock = time.monotonic) -> None:
        rps = limits.local_rps
        assert rps is not None
        self.max_rps = rps
        self.rps = rps
        self.min_rps = limits.min_rps if limits.min_rps is not None else rps / 16
        self.recovery_rps = limits.recovery_rps if limits.recovery_rps is not None else rps / 10
        self.burst = limits.burst
        self._clock = clock
        self._next_free = clock()  # GCRA's theoretical arrival time

    def reserve(self) -> float:
        """Take the next slot; the seconds to wait before using it."""
        now = self._clock()
        interval = 1.0 / self.rps
        slot = max(self._next_free, now)
        wait = max(0.0, slot - (self.burst - 1) * interval - now)
        self._next_free = slot + interval
        return wait

    def slow_down(self) -> None:
        self.rps = max(self.min_rps, self.rps / 2)

    def speed_up(self) -> None:
        self.rps = min(self.max_rps, self.rps + self.recovery_rps)


class Limiter:
    """An upstream's concurrency slots and token bucket."""

    def __init__(
        self, limits: UpstreamLimits, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._sleep = sleep
        self._slots = asyncio.Semaphore(limits.max_concurrency) if limits.max_concurrency else None
        self.bucket = TokenBucket(limits, clock=clock) if limits.local_rps else None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold a concurrency slot for one call, once the rate allows it; yields the
        seconds spent waiting."""
        started = self._clock()
        if self._slots is not None:
            await self._slots.acquire()
        try:
            if self.bucket is not None and (wait := self.bucket.reserve()) > 0:
                await self._sleep(wait)
            yield self._clock() - started
        finally:
            if self._slots is not None:
                self._slots.release()

    def throttled(self) -> None:
        """The upstream answered 429: halve the rate."""
        if self.bucket is not None:
            self.bucket.slow_down()

    def succeeded(self) -> None:
        if self.bucket is not None:
            self.bucket.speed_up()


def limits_for(
    upstream: str, limits: Mapping[str, UpstreamLimits], default: UpstreamLimits
) -> UpstreamLimits:
    """Exact name first, then the first matching glob pattern (`host:*.example.com`)."""
    if upstream in limits:
        return limits[upstream]
    for pattern, found in limits.items():
        if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(upstream, pattern):
            return found
    return default


def load_limits(path: Path) -> dict[str, UpstreamLimits]:
    """Read `{upstream or pattern: {max_concurrency, rps, burst, rpm, tpm, per_app: {...},
    per_user: {...}, ...}}` from YAML or JSON."""
    text = path.read_text()
    raw: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping of upstream name to limits")
    return {
        str(name): _parse_limits(entry, f"{path}: limits of {name!r}")
        for name, entry in raw.items()
    }


_KEYED = ("per_app", "per_user")


def _parse_limits(entry: Any, where: str, *, nested: bool = False) -> UpstreamLimits:
    known = {f.name for f in fields(UpstreamLimits)} - (set(_KEYED) if nested else set())
    if not isinstance(entry, Mapping) or set(entry) - known:
        raise ValueError(f"{where} must be a mapping with keys among {sorted(known)}")
    values = dict(entry)
    for key in _KEYED:
        if key in values and values[key] is not None:
            values[key] = _parse_limits(values[key], f"{where}.{key}", nested=True)
    try:
        return UpstreamLimits(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc
