"""The process's one Redis client for fleet-wide state, and whether Redis is usable now.

Every fleet-wide limit, breaker and cache entry goes through `FleetRedis.run`: a Lua script
(EVALSHA, one round trip) on one pooled client per process and event loop. When Redis does
not answer (refused, reset, timed out), the caller falls back to its per-process state: the
client is marked down for `retry_s`, so calls in that time do not each wait for a timeout.
The mode in force is the gauge `fanflow_flow_control_mode{mode="global"|"local"}` and is
logged on every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fanflow.metrics import FLOW_CONTROL_FALLBACKS, FLOW_CONTROL_MODE

log = logging.getLogger("fanflow.fleet")

#: what says Redis is away (not a bug in a script: those raise)
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)

GLOBAL = "global"
LOCAL = "local"


class FleetUnavailable(Exception):
    """Redis did not answer: use the per-process state for this call."""


#: the opening of a Lua script: `now`, the Redis server's clock in milliseconds (one clock
#: for the whole fleet)
LUA_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
"""


def set_mode(mode: str) -> None:
    """Publish the mode in force (global: Redis; local: per worker process)."""
    FLOW_CONTROL_MODE.labels(GLOBAL).set(1 if mode == GLOBAL else 0)
    FLOW_CONTROL_MODE.labels(LOCAL).set(1 if mode == LOCAL else 0)


class FleetRedis:
    """`redis.asyncio` against `url`, with keys under `prefix`."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "fanflow",
        retry_s: float = 5.0,
        timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._down_until = 0.0
        self._down = False
        self._client: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, AsyncScript] = {}
        set_mode(GLOBAL)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def available(self) -> bool:
        """False for `retry_s` after Redis failed to answer."""
        return not self._down or self._clock() >= self._down_until

    @property
    def mode(self) -> str:
        return LOCAL if self._down else GLOBAL

    def client(self) -> aioredis.Redis:
        """The pooled client of the running event loop (a new loop gets a new client)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry_on_timeout=False,
            )
            self._loop = loop
            self._scripts = {}
        return self._client

    async def run(self, lua: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the Lua script `lua`; raises `FleetUnavailable` when Redis does not answer."""
        client = self.client()
        script = self._scripts.get(lua)
        if script is None:
            script = self._scripts[lua] = client.register_script(lua)
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                result = await script(keys=list(keys), args=list(args))
        except UNAVAILABLE as exc:
            self._failed(exc)
            raise FleetUnavailable(str(exc)) from exc
        self._answered()
        return result

    def _failed(self, exc: BaseException) -> None:
        self._down_until = self._clock() + self.retry_s
        if not self._down:
            self._down = True
            FLOW_CONTROL_FALLBACKS.inc()
            set_mode(LOCAL)
            log.warning(
                "Redis at %s is not answering (%s: %s): fleet-wide limits, breakers and "
                "caches fall back to per-process ones; trying again every %g s",
                _safe_url(self.url),
                type(exc).__name__,
                exc,
                self.retry_s,
            )

    def _answered(self) -> None:
        if self._down:
            self._down = False
            set_mode(GLOBAL)
            log.warning("Redis at %s answers again: fleet-wide limits back", _safe_url(self.url))

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(*UNAVAILABLE):
                await client.aclose()


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
