"""The LLM response cache, opt-in per node: `fanflow: {cache: {ttl_s: 3600}}`.

Identical requests — the same app, endpoint, model, messages and parameters (tools and
response format included) — are answered from the cache instead of the model. Only calls
at temperature 0 are cached unless the node says `any_temperature: true` (a sampled answer
is one of many). Keys start with the app (`sys.app_id`), so apps never share answers; a
task that does not carry its app is not cached. A hit costs no tokens: its usage is 0.

Backends: Redis when the process has `FANFLOW_REDIS_URL` (shared by the fleet; while Redis
does not answer every lookup is a miss), else this process's memory (`fanflow run`).
Hits and misses: `fanflow_llm_cache_requests_total{result}`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fanflow.context import node_label
from fanflow.errors import NodeError
from fanflow.llm.client import Completion, ToolCall, Usage
from fanflow.messages import NodeTask
from fanflow.resilience.redis_client import FleetRedis, FleetUnavailable

_GET = "return redis.call('GET', KEYS[1])"
_SET = "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1"


class ResponseCache(Protocol):
    async def get(self, key: str) -> str | None: ...
    async def put(self, key: str, value: str, ttl_s: float) -> None: ...


@dataclass(frozen=True)
class CachePolicy:
    ttl_s: float
    any_temperature: bool = False

    @classmethod
    def of(cls, task: NodeTask) -> CachePolicy | None:
        """The node's `fanflow.cache`, or None when it asks for none."""
        extension = task.data.get("fanflow")
        config = extension.get("cache") if isinstance(extension, Mapping) else None
        if config is None or config is False:
            return None
        ttl = config.get("ttl_s") if isinstance(config, Mapping) else None
        if not isinstance(ttl, int | float) or isinstance(ttl, bool) or ttl <= 0:
            raise NodeError(
                f"{node_label(task)}: fanflow.cache must be a mapping with `ttl_s`, a number "
                f"of seconds > 0 (got {config!r})",
                error_type="LLMNodeError",
            )
        return cls(float(ttl), bool(config.get("any_temperature", False)))

    def admits(self, body: Mapping[str, Any]) -> bool:
        return self.any_temperature or body.get("temperature") == 0


def cache_key(app: str, endpoint: str, base_url: str, body: Mapping[str, Any]) -> str:
    """The app first (never shared across apps), then a digest of the whole request."""
    request = json.dumps(
        {"endpoint": endpoint, "base_url": base_url, "body": body},
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return f"{app}:{hashlib.sha256(request.encode()).hexdigest()}"


def encode(completion: Completion) -> str:
    return json.dumps(
        {
            "text": completion.text,
            "finish_reason": completion.finish_reason,
            "tool_calls": [[call.name, call.arguments] for call in completion.tool_calls],
        }
    )


def decode(value: str) -> Completion | None:
    """A cached answer (usage 0: a hit costs nothing); None when unreadable."""
    try:
        data = json.loads(value)
        return Completion(
            text=str(data["text"]),
            finish_reason=data.get("finish_reason"),
            usage=Usage(),
            tool_calls=tuple(ToolCall(str(n), str(a)) for n, a in data.get("tool_calls") or []),
        )
    except (ValueError, KeyError, TypeError):
        return None


class MemoryCache:
    """This process's answers, least recently used dropped past `max_entries`."""

    def __init__(
        self, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def get(self, key: str) -> str | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: str, ttl_s: float) -> None:
        self._entries[key] = (self._clock() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class RedisCache:
    """Answers shared by the fleet, under `{prefix}:llmc:{app}:{digest}`."""

    def __init__(self, redis: FleetRedis) -> None:
        self.redis = redis

    async def get(self, key: str) -> str | None:
        if not self.redis.available:
            return None
        try:
            value = await self.redis.run(_GET, [self.redis.key("llmc", key)], [])
        except FleetUnavailable:
            return None
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def put(self, key: str, value: str, ttl_s: float) -> None:
        if not self.redis.available:
            return
        with contextlib.suppress(FleetUnavailable):
            await self.redis.run(
                _SET, [self.redis.key("llmc", key)], [value, max(1, int(ttl_s * 1000))]
            )
