"""Pooled HTTP connections of one process, for the LLM nodes and the http-request node.

A new `httpx.AsyncClient` per call builds an SSL context (the CA bundle loaded, ≈40 ms of
CPU) and opens a new TCP connection: in a fan-out that was most of the process's CPU. An
`HttpPool` keeps, for the life of the process:

- one SSL context per `verify` setting (`ssl_context`, module-wide);
- `llm_client(base_url)`: one client per LLM upstream (base URL);
- `request_client(...)`: the http-request node's client per SSRF-guard setting and
  `ssl_verify`, its `GuardedTransport` keeping one connection pool per host name, each
  connection pinned to an address the guard checked for that request.

Every pool keeps up to `max_connections` connections per host alive for
`keepalive_expiry_s`. No client keeps cookies: a `Set-Cookie` from one node's call must
not ride along on another run's. The owner of the process's `ExecutionContext` opens the
pool and closes it at shutdown (the worker; the embedded runner for its run); it lives on
one event loop.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from http.cookiejar import DefaultCookiePolicy
from types import TracebackType
from typing import Any

import httpx

#: connections kept per upstream host when the owner does not size the pool
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_KEEPALIVE_EXPIRY_S = 30.0
#: connections per httpcore pool: its bookkeeping on every request is quadratic in the
#: pool's size (≈10^4 checks per request at 100), so a host's connections are spread over
#: pools of at most this many (measured, 1,000 calls at 100 in flight: 16 → 2.9 s CPU,
#: 8 → 2.2 s, 4 → 1.7 s, 2 and 1 → no better)
SHARD_CONNECTIONS = 4
_SSL_CONTEXTS: dict[bool, ssl.SSLContext] = {}


def ssl_context(verify: bool = True) -> ssl.SSLContext:
    """The process's SSL context for `verify` (built on first use: it loads the CA bundle)."""
    if verify not in _SSL_CONTEXTS:
        _SSL_CONTEXTS[verify] = httpx.create_ssl_context(verify=verify)
    return _SSL_CONTEXTS[verify]


def without_cookies(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """`client`, made to store no cookie (httpx copies a jar passed in, not its policy)."""
    client.cookies.jar.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return client


class ShardedTransport(httpx.AsyncBaseTransport):
    """`limits.max_connections` connections as several small httpcore pools.

    A request goes to the first pool with a free connection, so sequential requests reuse
    one connection and concurrent ones fill the pools in order.
    """

    def __init__(self, *, limits: httpx.Limits | None = None, **options: Any) -> None:
        limits = limits or httpx.Limits(keepalive_expiry=DEFAULT_KEEPALIVE_EXPIRY_S)
        total = limits.max_connections or DEFAULT_MAX_CONNECTIONS
        count = -(-total // SHARD_CONNECTIONS)
        self._per_shard = -(-total // count)
        shard_limits = httpx.Limits(
            max_connections=self._per_shard,
            max_keepalive_connections=self._per_shard,
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._shards = [
            httpx.AsyncHTTPTransport(limits=shard_limits, **options) for _ in range(count)
        ]
        self._in_flight = [0] * count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self._pick()
        self._in_flight[index] += 1
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            self._in_flight[index] -= 1
            raise
        return released(response, lambda: self._done(index))

    def _pick(self) -> int:
        for index, busy in enumerate(self._in_flight):
            if busy < self._per_shard:
                return index
        return min(range(len(self._in_flight)), key=self._in_flight.__getitem__)

    def _done(self, index: int) -> None:
        self._in_flight[index] -= 1

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def released(response: httpx.Response, release: Callable[[], None]) -> httpx.Response:
    """`response`, calling `release` once when its body is closed."""
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=_Released(response.stream, release),
        extensions=response.extensions,
    )


class _Released(httpx.AsyncByteStream):
    def __init__(self, stream: Any, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class HttpPool:
    """The process's HTTP clients; `aclose()` (or `async with`) closes every connection."""

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keepalive_expiry_s: float = DEFAULT_KEEPALIVE_EXPIRY_S,
    ) -> None:
        self.limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry_s,
        )
        self._llm: dict[str, httpx.AsyncClient] = {}
        self._requests: dict[tuple[bool, tuple[str, ...], bool], httpx.AsyncClient] = {}
        self._closed = False

    def llm_client(self, base_url: str) -> httpx.AsyncClient:
        """The client for the LLM upstream at `base_url` (timeouts are set per request)."""
        client = self._llm.get(base_url)
        if client is None:
            self._check_open()
            transport = ShardedTransport(verify=ssl_context(True), limits=self.limits)
            client = without_cookies(httpx.AsyncClient(transport=transport))
            self._llm[base_url] = client
        return client

    def request_client(
        self, *, ssl_verify: bool, allow_private_networks: bool, allow_list: tuple[str, ...]
    ) -> httpx.AsyncClient:
        """The http-request node's client: redirects not followed (the node checks every
        hop), no proxy from the environment, behind the SSRF guard unless it is off."""
        from fanflow.resilience.ssrf import AddressGuard, GuardedTransport

        key = (allow_private_networks, allow_list, ssl_verify)
        client = self._requests.get(key)
        if client is None:
            self._check_open()
            transport: httpx.AsyncBaseTransport
            if allow_private_networks:
                transport = ShardedTransport(
                    verify=ssl_context(ssl_verify), trust_env=False, limits=self.limits
                )
            else:
                guard = AddressGuard(allow_list=allow_list)
                transport = GuardedTransport(
                    guard, ssl_context=ssl_context(ssl_verify), limits=self.limits
                )
            client = without_cookies(
                httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)
            )
            self._requests[key] = client
        return client

    async def aclose(self) -> None:
        self._closed = True
        clients = [*self._llm.values(), *self._requests.values()]
        self._llm.clear()
        self._requests.clear()
        for client in clients:
            await client.aclose()

    async def __aenter__(self) -> HttpPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this HttpPool is closed")
