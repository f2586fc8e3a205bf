"""The `http-request` node: one HTTP call, Dify's fields and outputs, behind the SSRF guard.

Fields as in Dify: `method`; `url`, `headers` and `params` with `{{#node.var#}}` references
(headers and params are `key:value` lines); `authorization` no-auth or api-key (bearer,
basic, custom header); `body` none, raw-text, json, x-www-form-urlencoded or form-data;
`timeout {connect, read, write}` in seconds (default and maximum 10, 600, 600, as Dify);
`ssl_verify`. Outputs `status_code`, `body` (text), `headers` (lower-case names), `files`.

As in Dify, a non-2xx status fails the node only when it has an `error_strategy` or retries
configured; otherwise the node succeeds with that status. Responses are capped at Dify's
sizes (1 MiB of text).

Resilience: the call goes through `context.upstreams` as upstream `host:<host>`. Idempotent
methods (GET, HEAD, OPTIONS, PUT, DELETE) get up to 3 quick in-worker attempts on connection
errors, timeouts, 5xx and 429; the others exactly one, since a repeated POST can act twice.
Redirects are followed here (at most 5), each hop through the SSRF guard
(`fanflow.resilience.ssrf`); Authorization headers and cookies are dropped when a redirect leaves the
origin.

Departures from Dify: files are not supported yet — form-data file items, binary bodies and
file responses (Dify turns those into `files`) fail the node with NotSupportedError, and
`files` is always `[]` (a form-data file item with no file is left out, as in Dify); `params`
are added to the URL's own query instead of replacing it.

This module sends; `http_build` builds the request, `http_response` reads the reply.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from fanflow.context import ExecutionContext, ExecutionOutcome, node_label
from fanflow.executors.http_build import (
    MAX_CONNECT_TIMEOUT_S,
    MAX_READ_TIMEOUT_S,
    MAX_WRITE_TIMEOUT_S,
    METHODS,
    HttpRequest,
    build_request,
    invalid,
    status_fails_node,
)
from fanflow.executors.http_build import request_timeout as _timeout  # noqa: F401  (tests use it here)
from fanflow.executors.http_response import (
    MAX_BINARY_BYTES,
    MAX_TEXT_BYTES,
    HttpReply,
    StatusFailure,
    check_status,
    read_reply,
    reply_outputs,
    transport_failure,
)
from fanflow.executors.outbound import context_pool
from fanflow.http_pool import (
    _SSL_CONTEXTS,  # noqa: F401  (tests patch it here)
)
from fanflow.messages import NodeTask
from fanflow.resilience.ssrf import SsrfRefused
from fanflow.resilience.upstreams import RetryPolicy, UpstreamFailure

__all__ = [
    "IDEMPOTENT_METHODS",
    "IDEMPOTENT_RETRY",
    "MAX_BINARY_BYTES",
    "MAX_CONNECT_TIMEOUT_S",
    "MAX_READ_TIMEOUT_S",
    "MAX_REDIRECTS",
    "MAX_TEXT_BYTES",
    "MAX_WRITE_TIMEOUT_S",
    "METHODS",
    "NO_RETRY",
    "run_http_request",
]

MAX_REDIRECTS = 5
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
IDEMPOTENT_RETRY = RetryPolicy(
    max_attempts=3, retry_on=frozenset({"timeout", "connect", "status_5xx", "status_429"})
)
NO_RETRY = RetryPolicy(max_attempts=1)
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


async def run_http_request(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
    label = node_label(task)
    request = build_request(task, label)
    fails_on_status = status_fails_node(task.data)
    async with context_pool(context) as pool:
        client = pool.request_client(
            ssl_verify=request.ssl_verify,
            allow_private_networks=context.allow_private_networks,
            allow_list=context.http_allow_list,
        )

        async def attempt() -> HttpReply:
            return await _send(client, request, label)

        try:
            if context.upstreams is None:
                reply = await attempt()
            else:
                policy = IDEMPOTENT_RETRY if request.method in IDEMPOTENT_METHODS else NO_RETRY
                reply = await context.upstreams.call(
                    f"host:{request.url.host}", attempt, kind="http", retry=policy
                )
        except StatusFailure as failure:
            if fails_on_status:
                raise
            reply = failure.reply
    if fails_on_status and not 200 <= reply.status_code < 300:
        raise UpstreamFailure(
            f"{label}: Request failed with status code {reply.status_code}",
            reason="status_4xx" if 400 <= reply.status_code < 500 else "invalid",
            retryable=True,  # Dify retries any failure of a node with retry_config
            status_code=reply.status_code,
            error_type="HTTPResponseCodeError",
        )
    return ExecutionOutcome(outputs=reply_outputs(reply, label))


async def _send(client: httpx.AsyncClient, request: HttpRequest, label: str) -> HttpReply:
    """One attempt: the request and its redirects, each hop through the SSRF guard."""
    method, url, content = request.method, request.url, request.content
    headers = dict(request.headers)
    for hop in range(MAX_REDIRECTS + 1):
        where = f"{label}: {method} {url.scheme}://{url.netloc.decode()}{url.path}"
        outgoing = client.build_request(
            method,
            url,
            # values as UTF-8: httpx would refuse non-ASCII text, most servers take it
            headers=[(k.encode("ascii"), v.encode()) for k, v in headers.items()],
            content=content,
            timeout=request.timeout,
        )
        with _transport_errors(where, label):
            response = await client.send(outgoing, stream=True)
        try:
            location = response.headers.get("location")
            if response.status_code in _REDIRECT_STATUSES and location:
                if hop == MAX_REDIRECTS:
                    raise invalid(
                        f"{where}: more than {MAX_REDIRECTS} redirects", "TooManyRedirectsError"
                    )
                url, method, content, headers = _redirect(
                    url, location, response.status_code, method, content, headers, request, where
                )
                continue
            with _transport_errors(where, label):
                reply = await read_reply(response, where)
        finally:
            await response.aclose()
        return check_status(reply, where)
    raise AssertionError("unreachable: the loop returns or raises")


@contextmanager
def _transport_errors(where: str, label: str) -> Iterator[None]:
    """httpx's exceptions as classified failures."""
    try:
        yield
    except httpx.TransportError as exc:
        raise transport_failure(exc, where, "HttpRequestNodeError") from exc
    except httpx.DecodingError as exc:
        raise invalid(
            f"{where}: cannot decode the response: {exc}", "HttpRequestNodeError"
        ) from exc
    except UpstreamFailure as exc:
        if str(exc).startswith(label):
            raise
        # from the SSRF guard (a refusal, a host that does not resolve): name the node
        labelled = f"{label}: {exc}"
        if isinstance(exc, SsrfRefused):
            raise SsrfRefused(labelled) from exc
        raise exc.relabelled(labelled) from exc


def _redirect(
    url: httpx.URL,
    location: str,
    status: int,
    method: str,
    content: bytes,
    headers: dict[str, str],
    request: HttpRequest,
    where: str,
) -> tuple[httpx.URL, str, bytes, dict[str, str]]:
    """The next hop, as browsers and httpx do it."""
    try:
        target = url.join(location)
    except httpx.InvalidURL as exc:
        raise invalid(
            f"{where}: invalid redirect location {location!r}", "InvalidURLError"
        ) from exc
    if target.scheme not in ("http", "https") or not target.host:
        raise invalid(f"{where}: redirect to a non-HTTP url {location!r}", "InvalidURLError")
    headers = dict(headers)
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, content = "GET", b""
        for name in [k for k in headers if k.lower() in ("content-type", "content-length")]:
            del headers[name]
    if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
        # credentials and cookies are for the origin the node named, not for where it sends us
        dropped = {"authorization", "cookie", "host", (request.auth_header or "").lower()}
        for name in [k for k in headers if k.lower() in dropped]:
            del headers[name]
    return target, method, content, headers


# ---- errors ----
