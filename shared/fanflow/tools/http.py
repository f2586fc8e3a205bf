"""HTTP for tools: the process's pooled, SSRF-guarded client behind `Upstreams.call`.

Every call of a network tool goes through here, so it gets what every external call gets:
the breaker and rate limits of its upstream (`tool:<provider>` for the provider's own API,
`host:<host>` for a URL the workflow gave), short in-worker retries of timeouts, connection
errors, 5xx and 429 (queries only: `idempotent=False` sends once), and the upstream metrics.

The SSRF guard checks every connection (redirect hops included, at most 5). A provider's
configured `base_url` host is let through (`trusted=True`); a URL from the workflow is not.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from fanflow.executors.http_response import (
    HttpReply,
    check_status,
    read_capped,
    read_reply,
    transport_failure,
)
from fanflow.http_pool import HttpPool
from fanflow.resilience.ssrf import SsrfRefused
from fanflow.resilience.upstreams import RetryPolicy, UpstreamFailure

__all__ = ["QUERY_RETRY", "ToolHttp", "ToolReply"]

MAX_REDIRECTS = 5
QUERY_RETRY = RetryPolicy(
    max_attempts=3, retry_on=frozenset({"timeout", "connect", "status_5xx", "status_429"})
)
_ONCE = RetryPolicy(max_attempts=1)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class ToolReply(HttpReply):
    """A reply with `where` it came from (the tool, the method, the URL without its query)."""

    where: str

    @property
    def text(self) -> str:
        return self.content.decode(self.encoding or "utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; a body that is not JSON is a malformed answer (reason format)."""
        try:
            return json.loads(self.content)
        except ValueError:
            raise UpstreamFailure(
                f"{self.where}: the answer is not JSON: {self.text[:200]!r}",
                reason="format",
                retryable=False,
                error_type="ToolInvokeError",
            ) from None


class ToolHttp:
    """One tool call's HTTP: `request` sends one logical request (retries and hops inside)."""

    def __init__(
        self,
        *,
        pool: HttpPool,
        upstreams: Any,
        provider: str,
        label: str,
        allow_private_networks: bool = False,
        allow_list: tuple[str, ...] = (),
        trusted_hosts: tuple[str, ...] = (),
    ) -> None:
        self._pool = pool
        self._upstreams = upstreams
        self._provider = provider
        self._label = label
        self._allow_private = allow_private_networks
        self._allow_list = allow_list
        self._trusted = trusted_hosts

    @property
    def upstreams(self) -> Any:
        """The process's `Upstreams` (for tools that call through another client)."""
        return self._upstreams

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        timeout_s: float = 60.0,
        trusted: bool = True,
        idempotent: bool = True,
        max_bytes: int | None = None,
    ) -> ToolReply:
        """`method url`; a 4xx is raised (status_4xx), 5xx and 429 raised after retries.
        `max_bytes` replaces the http-request node's caps (1 MiB text, 10 MiB else)."""
        try:
            target = httpx.URL(url, params=_params(params))
        except (httpx.InvalidURL, TypeError) as exc:
            raise UpstreamFailure(
                f"{self._label}: invalid url {url!r}: {exc}",
                reason="invalid",
                retryable=False,
                error_type="ToolInvokeError",
            ) from exc
        if target.scheme not in ("http", "https") or not target.host:
            raise UpstreamFailure(
                f"{self._label}: url must be http(s) with a host, got {url!r}",
                reason="invalid",
                retryable=False,
                error_type="ToolInvokeError",
            )
        allow = self._allow_list + (self._trusted if trusted else ())
        client = self._pool.request_client(
            ssl_verify=True, allow_private_networks=self._allow_private, allow_list=allow
        )
        body = content
        sent_headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body, ensure_ascii=False).encode()
            sent_headers.setdefault("Content-Type", "application/json")
        timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))

        async def attempt() -> HttpReply:
            return await self._send(
                client, method.upper(), target, sent_headers, body, timeout, max_bytes
            )

        upstream = f"tool:{self._provider}" if trusted else f"host:{target.host}"
        policy = QUERY_RETRY if idempotent else _ONCE
        if self._upstreams is None:
            reply = await attempt()
        else:
            reply = await self._upstreams.call(upstream, attempt, kind="tool", retry=policy)
        where = f"{self._label}: {self._provider}: {method.upper()} {_shown(target)}"
        return ToolReply(reply.status_code, reply.headers, reply.content, reply.encoding, where)

    async def _send(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        content: bytes | None,
        timeout: httpx.Timeout,
        max_bytes: int | None = None,
    ) -> HttpReply:
        for hop in range(MAX_REDIRECTS + 1):
            where = f"{self._label}: {self._provider}: {method} {_shown(url)}"
            outgoing = client.build_request(
                method, url, headers=headers, content=content, timeout=timeout
            )
            with self._errors(where):
                response = await client.send(outgoing, stream=True)
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    if hop == MAX_REDIRECTS:
                        raise _invalid(f"{where}: more than {MAX_REDIRECTS} redirects")
                    next_url = url.join(location)
                    if next_url.scheme not in ("http", "https"):
                        raise _invalid(f"{where}: redirect to a non-HTTP url {location!r}")
                    if (next_url.scheme, next_url.host, next_url.port) != (
                        url.scheme,
                        url.host,
                        url.port,
                    ):
                        headers = {
                            k: v
                            for k, v in headers.items()
                            if k.lower() not in ("authorization", "cookie", "x-api-key")
                        }
                    if response.status_code == 303 or (
                        response.status_code in (301, 302) and method == "POST"
                    ):
                        method, content = "GET", None
                    url = next_url
                    continue
                with self._errors(where):
                    if max_bytes is None:
                        reply = await read_reply(response, where)
                    else:
                        reply = await read_capped(response, max_bytes, _too_large(where, max_bytes))
            finally:
                await response.aclose()
            check_status(reply, where)
            if 400 <= reply.status_code < 500:
                raise UpstreamFailure(
                    f"{where}: the service answered {reply.status_code}: "
                    f"{reply.content[:300].decode('utf-8', 'replace')}",
                    reason="status_4xx",
                    retryable=False,
                    status_code=reply.status_code,
                    error_type="ToolInvokeError",
                )
            return reply
        raise AssertionError("unreachable: the loop returns or raises")

    @contextmanager
    def _errors(self, where: str) -> Iterator[None]:
        try:
            yield
        except httpx.TransportError as exc:
            raise transport_failure(exc, where, "ToolInvokeError") from exc
        except SsrfRefused as exc:
            raise SsrfRefused(f"{where}: {exc}") from exc
        except UpstreamFailure as exc:
            if str(exc).startswith(self._label):
                raise
            raise exc.relabelled(f"{where}: {exc}") from exc


def _params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    return {str(k): _param_text(v) for k, v in params.items() if v is not None}


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _shown(url: httpx.URL) -> str:
    """The URL without its query (keys may travel there)."""
    return f"{url.scheme}://{url.netloc.decode()}{url.path}"


def _too_large(where: str, limit: int) -> Callable[[], UpstreamFailure]:
    return lambda: _invalid(f"{where}: the answer is larger than {limit} bytes")


def _invalid(message: str) -> UpstreamFailure:
    return UpstreamFailure(message, reason="invalid", retryable=False, error_type="ToolInvokeError")
