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
(`fanflow.ssrf`); Authorization headers and cookies are dropped when a redirect leaves the
origin.

Departures from Dify: files are not supported yet — form-data file items, binary bodies and
file responses (Dify turns those into `files`) fail the node with NotSupportedError, and
`files` is always `[]`; a JSON body must be valid JSON (Dify repairs broken JSON); `params`
are added to the URL's own query instead of replacing it.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import urlencode

import httpx

from fanflow.errors import NodeError
from fanflow.executors.base import ExecutionContext, ExecutionOutcome, node_label, register
from fanflow.messages import NodeTask
from fanflow.ssrf import AddressGuard, GuardedTransport, SsrfRefused
from fanflow.upstreams import RetryPolicy, UpstreamFailure, parse_retry_after
from fanflow.variables import Lookup, render

#: Dify's HTTP_REQUEST_MAX_{CONNECT,READ,WRITE}_TIMEOUT: defaults and caps of `timeout`
MAX_CONNECT_TIMEOUT_S = 10.0
MAX_READ_TIMEOUT_S = 600.0
MAX_WRITE_TIMEOUT_S = 600.0
#: Dify's HTTP_REQUEST_NODE_MAX_TEXT_SIZE and _MAX_BINARY_SIZE
MAX_TEXT_BYTES = 1024 * 1024
MAX_BINARY_BYTES = 10 * 1024 * 1024
MAX_REDIRECTS = 5

METHODS = frozenset({"get", "head", "post", "put", "patch", "delete", "options"})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
IDEMPOTENT_RETRY = RetryPolicy(
    max_attempts=3, retry_on=frozenset({"timeout", "connect", "status_5xx", "status_429"})
)
NO_RETRY = RetryPolicy(max_attempts=1)
_DEFAULT_CONTENT_TYPES = {
    "json": "application/json",
    "x-www-form-urlencoded": "application/x-www-form-urlencoded",
    "raw-text": "text/plain",
}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TEXT_APPLICATION_TYPES = ("json", "xml", "javascript", "x-www-form-urlencoded", "yaml", "graphql")
_TEXT_MARKERS = (b"{", b"[", b"<", b"function", b"var ", b"const ", b"let ")
_SSL_CONTEXTS: dict[bool, ssl.SSLContext] = {}
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token


@dataclass(frozen=True)
class _Request:
    method: str
    url: httpx.URL
    headers: dict[str, str]
    #: the header carrying the node's credentials (dropped on a cross-origin redirect)
    auth_header: str | None
    content: bytes
    timeout: httpx.Timeout
    ssl_verify: bool


@dataclass(frozen=True)
class _Reply:
    status_code: int
    headers: dict[str, str]
    content: bytes
    encoding: str


class _StatusFailure(UpstreamFailure):
    """A 5xx or 429: a failure for the breaker and retries, a plain reply for a node that
    does not fail on non-2xx statuses."""

    def __init__(self, message: str, reply: _Reply, **kwargs: Any) -> None:
        super().__init__(message, status_code=reply.status_code, **kwargs)
        self.reply = reply


@register("http-request")
async def run_http_request(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
    label = node_label(task)
    request = _build_request(task, label)
    fails_on_status = _fails_on_status(task.data)
    async with _client(request, context) as client:

        async def attempt() -> _Reply:
            return await _send(client, request, label)

        try:
            if context.upstreams is None:
                reply = await attempt()
            else:
                policy = IDEMPOTENT_RETRY if request.method in IDEMPOTENT_METHODS else NO_RETRY
                reply = await context.upstreams.call(
                    f"host:{request.url.host}", attempt, kind="http", retry=policy
                )
        except _StatusFailure as failure:
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
    return ExecutionOutcome(outputs=_outputs(reply, label))


# ---- the request ----


def _build_request(task: NodeTask, label: str) -> _Request:
    data = task.data
    lookup = task.lookup
    method = str(data.get("method") or "get").lower()
    if method not in METHODS:
        raise _invalid(
            f"{label}: Invalid http method {data.get('method')!r}", "InvalidHttpMethodError"
        )
    url = _url(render(str(data.get("url") or ""), lookup), _params(data, lookup), label)
    headers = _headers(render(str(data.get("headers") or ""), lookup), label)
    auth_header = _authorize(data.get("authorization"), headers, lookup, label)
    content = _body(data.get("body"), headers, lookup, label)
    return _Request(
        method=method.upper(),
        url=url,
        headers=headers,
        auth_header=auth_header,
        content=content,
        timeout=_timeout(data.get("timeout")),
        ssl_verify=_ssl_verify(data.get("ssl_verify"), label),
    )


def _url(text: str, params: list[tuple[str, str]], label: str) -> httpx.URL:
    if not text:
        raise _invalid(f"{label}: url is required", "InvalidURLError")
    if not text.startswith(("http://", "https://")):
        raise _invalid(
            f"{label}: url should start with http:// or https://, got {text!r}", "InvalidURLError"
        )
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise _invalid(f"{label}: invalid url {text!r}: {exc}", "InvalidURLError") from exc
    if not url.host:
        raise _invalid(f"{label}: url {text!r} has no host", "InvalidURLError")
    if params:
        query = url.query.decode("ascii")
        added = urlencode(params)
        url = url.copy_with(query=(f"{query}&{added}" if query else added).encode("ascii"))
    return url


def _lines(text: str) -> list[tuple[str, str]]:
    """`key:value` per line; a line without a colon is a key with an empty value."""
    found = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip():
            found.append((key.strip(), value.strip()))
    return found


def _params(data: Mapping[str, Any], lookup: Lookup) -> list[tuple[str, str]]:
    # each key and value is rendered on its own, so a value may contain newlines or colons
    return [
        (render(key, lookup), render(value, lookup))
        for key, value in _lines(str(data.get("params") or ""))
    ]


def _headers(text: str, label: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in _lines(text):
        if not _HEADER_NAME.fullmatch(key):
            raise _invalid(f"{label}: {key!r} is not a valid header name", "InvalidHeaderError")
        _set_header(headers, key, value)
    return headers


def _set_header(headers: dict[str, str], name: str, value: str) -> None:
    for existing in [k for k in headers if k.lower() == name.lower()]:
        del headers[existing]
    headers[name] = value


def _authorize(raw: Any, headers: dict[str, str], lookup: Lookup, label: str) -> str | None:
    auth = raw if isinstance(raw, Mapping) else {}
    if (auth.get("type") or "no-auth") == "no-auth":
        return None
    config = auth.get("config")
    if auth.get("type") != "api-key" or not isinstance(config, Mapping):
        raise _invalid(
            f"{label}: authorization must be no-auth, or api-key with a config",
            "AuthorizationConfigError",
        )
    api_key = render(str(config.get("api_key") or ""), lookup)
    if not api_key.strip():
        raise _invalid(
            f"{label}: API key is required for authorization but was empty",
            "AuthorizationConfigError",
        )
    header = str(config.get("header") or "") or "Authorization"
    kind = config.get("type")
    if kind == "bearer":
        value = f"Bearer {api_key}"
    elif kind == "basic":  # "user:password" is encoded; anything else is taken as encoded
        encoded = base64.b64encode(api_key.encode()).decode() if ":" in api_key else api_key
        value = f"Basic {encoded}"
    elif kind == "custom":
        value = api_key
    else:
        raise _invalid(
            f"{label}: authorization.config.type must be basic, bearer or custom, got {kind!r}",
            "AuthorizationConfigError",
        )
    _set_header(headers, header, value)
    return header


def _body(raw: Any, headers: dict[str, str], lookup: Lookup, label: str) -> bytes:
    body = raw if isinstance(raw, Mapping) else {}
    kind = body.get("type") or "none"
    items = _body_items(body.get("data"))
    if kind == "none":
        return b""
    if kind in ("raw-text", "json"):
        if len(items) != 1:
            raise _invalid(
                f"{label}: {kind} body type should have exactly one item", "RequestBodyError"
            )
        text = render(str(items[0].get("value") or ""), lookup)
        if kind == "json":
            try:
                text = json.dumps(json.loads(text, strict=False), ensure_ascii=False)
            except json.JSONDecodeError as exc:
                raise _invalid(
                    f"{label}: Failed to parse JSON ({exc}): {text[:200]}", "RequestBodyError"
                ) from exc
        content = text.encode()
    elif kind == "x-www-form-urlencoded":
        fields = {
            render(str(i.get("key") or ""), lookup): render(str(i.get("value") or ""), lookup)
            for i in items
        }
        content = urlencode(fields).encode()
    elif kind == "form-data":
        if any(item.get("type") == "file" for item in items):
            raise _unsupported(
                f"{label}: form-data file items are not supported yet (text items are)"
            )
        boundary = secrets.token_hex(16)
        fields = {
            render(str(i.get("key") or ""), lookup): render(str(i.get("value") or ""), lookup)
            for i in items
        }
        _set_header(headers, "Content-Type", f"multipart/form-data; boundary={boundary}")
        return _multipart(fields, boundary)
    elif kind == "binary":
        raise _unsupported(f"{label}: binary bodies (a file variable) are not supported yet")
    else:
        raise _invalid(f"{label}: unknown body type {kind!r}", "RequestBodyError")
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = _DEFAULT_CONTENT_TYPES[kind]
    return content


def _body_items(data: Any) -> list[Mapping[str, Any]]:
    if isinstance(data, str):  # older DSL: the body text itself
        return [{"type": "text", "key": "", "value": data}] if data else []
    return [item for item in data or [] if isinstance(item, Mapping)]


def _multipart(fields: Mapping[str, str], boundary: str) -> bytes:
    parts = []
    for name, value in fields.items():
        quoted = (
            name.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        )
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{quoted}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _timeout(raw: Any) -> httpx.Timeout:
    given = raw if isinstance(raw, Mapping) else {}

    def seconds(name: str, cap: float) -> float:
        value = given.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            return cap
        return min(float(value), cap)

    connect = seconds("connect", MAX_CONNECT_TIMEOUT_S)
    return httpx.Timeout(
        connect=connect,
        read=seconds("read", MAX_READ_TIMEOUT_S),
        write=seconds("write", MAX_WRITE_TIMEOUT_S),
        pool=connect,
    )


def _ssl_verify(raw: Any, label: str) -> bool:
    if raw is None:
        return True
    if isinstance(raw, bool):
        return raw
    raise _invalid(f"{label}: ssl_verify must be true or false, got {raw!r}", "InvalidConfigError")


def _fails_on_status(data: Mapping[str, Any]) -> bool:
    """Dify: a non-2xx status fails the node only with an error strategy or retries."""
    if data.get("error_strategy") in ("fail-branch", "default-value"):
        return True
    retry = data.get("retry_config")
    if isinstance(retry, Mapping):
        enabled = retry.get("retry_enabled")
        if enabled is True or (isinstance(enabled, str) and enabled.strip().lower() == "true"):
            return True
    extension = data.get("fanflow")
    return isinstance(extension, Mapping) and bool(extension.get("retry"))


# ---- the exchange ----


def _client(request: _Request, context: ExecutionContext) -> httpx.AsyncClient:
    ssl_context = _ssl_context(request.ssl_verify)
    transport: httpx.AsyncBaseTransport
    if context.allow_private_networks:
        transport = httpx.AsyncHTTPTransport(verify=ssl_context, trust_env=False)
    else:
        guard = AddressGuard(allow_list=context.http_allow_list)
        transport = GuardedTransport(guard, ssl_context=ssl_context)
    return httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)


def _ssl_context(verify: bool) -> ssl.SSLContext:
    # building one loads the CA bundle: once per process, not per request
    if verify not in _SSL_CONTEXTS:
        _SSL_CONTEXTS[verify] = httpx.create_ssl_context(verify=verify)
    return _SSL_CONTEXTS[verify]


async def _send(client: httpx.AsyncClient, request: _Request, label: str) -> _Reply:
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
                    raise _invalid(
                        f"{where}: more than {MAX_REDIRECTS} redirects", "TooManyRedirectsError"
                    )
                url, method, content, headers = _redirect(
                    url, location, response.status_code, method, content, headers, request, where
                )
                continue
            with _transport_errors(where, label):
                reply = await _read(response, where)
        finally:
            await response.aclose()
        return _check_status(reply, where)
    raise AssertionError("unreachable: the loop returns or raises")


@contextmanager
def _transport_errors(where: str, label: str) -> Iterator[None]:
    """httpx's exceptions as classified failures."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise _failure(f"{where}: cannot connect: {exc or type(exc).__name__}", "connect") from exc
    except httpx.TimeoutException as exc:
        raise _failure(f"{where}: timed out ({type(exc).__name__})", "timeout") from exc
    except httpx.TransportError as exc:
        raise _failure(f"{where}: {type(exc).__name__}: {exc}", "connect") from exc
    except httpx.DecodingError as exc:
        raise _invalid(
            f"{where}: cannot decode the response: {exc}", "HttpRequestNodeError"
        ) from exc
    except UpstreamFailure as exc:
        if str(exc).startswith(label):
            raise
        # from the SSRF guard (a refusal, a host that does not resolve): name the node
        labelled = f"{label}: {exc}"
        if isinstance(exc, SsrfRefused):
            raise SsrfRefused(labelled) from exc
        raise UpstreamFailure(
            labelled,
            reason=exc.reason,
            retryable=exc.retryable,
            retry_after_s=exc.retry_after_s,
            status_code=exc.status_code,
            error_type=exc.error_type,
        ) from exc


def _redirect(
    url: httpx.URL,
    location: str,
    status: int,
    method: str,
    content: bytes,
    headers: dict[str, str],
    request: _Request,
    where: str,
) -> tuple[httpx.URL, str, bytes, dict[str, str]]:
    """The next hop, as browsers and httpx do it."""
    try:
        target = url.join(location)
    except httpx.InvalidURL as exc:
        raise _invalid(
            f"{where}: invalid redirect location {location!r}", "InvalidURLError"
        ) from exc
    if target.scheme not in ("http", "https") or not target.host:
        raise _invalid(f"{where}: redirect to a non-HTTP url {location!r}", "InvalidURLError")
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


async def _read(response: httpx.Response, where: str) -> _Reply:
    content_type = response.headers.get("content-type", "")
    limit = MAX_TEXT_BYTES if _is_text_type(content_type) else MAX_BINARY_BYTES
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(where, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _too_large(where, limit)
        chunks.append(chunk)
    return _Reply(
        status_code=response.status_code,
        headers=dict(response.headers),
        content=b"".join(chunks),
        encoding=response.encoding or "utf-8",
    )


def _check_status(reply: _Reply, where: str) -> _Reply:
    """5xx and 429 are failures for the breaker and the retries (the caller may still
    take them as replies)."""
    message = f"{where}: Request failed with status code {reply.status_code}"
    if reply.status_code >= 500:
        raise _StatusFailure(
            message, reply, reason="status_5xx", retryable=True, error_type="HTTPResponseCodeError"
        )
    if reply.status_code == 429:
        raise _StatusFailure(
            message,
            reply,
            reason="status_429",
            retryable=True,
            retry_after_s=parse_retry_after(reply.headers.get("retry-after")),
            error_type="HTTPResponseCodeError",
        )
    return reply


# ---- the outputs ----


def _outputs(reply: _Reply, label: str) -> dict[str, Any]:
    if reply.content and _is_file(reply):
        kind = reply.headers.get("content-type") or "no content type"
        raise _unsupported(
            f"{label}: the response is a file ({kind}); fanflow's http-request node "
            "returns text bodies only, files are not supported yet"
        )
    if len(reply.content) > MAX_TEXT_BYTES:
        raise _too_large(label, MAX_TEXT_BYTES)
    return {
        "status_code": reply.status_code,
        "body": reply.content.decode(reply.encoding, errors="replace"),
        "headers": reply.headers,
        "files": [],
    }


def _media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def _is_text_type(content_type: str) -> bool:
    media = _media_type(content_type)
    return (
        not media
        or media.startswith("text/")
        or (media.startswith("application/") and any(t in media for t in _TEXT_APPLICATION_TYPES))
    )


def _is_file(reply: _Reply) -> bool:
    """Dify's test: an attachment, or a binary media type whose bytes do not look like text."""
    disposition = reply.headers.get("content-disposition")
    if disposition:
        message = Message()
        message["content-disposition"] = disposition
        if message.get_content_disposition() == "attachment" or message.get_filename():
            return True
    media = _media_type(reply.headers.get("content-type", ""))
    if _is_text_type(media):
        return False
    if media.startswith("application/") and _looks_like_text(reply.content):
        return False
    return media.split("/")[0] in ("application", "image", "audio", "video")


def _looks_like_text(content: bytes) -> bool:
    sample = content[:1024]
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return any(marker in sample for marker in _TEXT_MARKERS)


# ---- errors ----


def _failure(message: str, reason: str) -> UpstreamFailure:
    return UpstreamFailure(
        message, reason=reason, retryable=True, error_type="HttpRequestNodeError"
    )


def _invalid(message: str, error_type: str) -> UpstreamFailure:
    """A request or reply no retry can fix."""
    return UpstreamFailure(message, reason="invalid", retryable=False, error_type=error_type)


def _unsupported(message: str) -> NodeError:
    return NodeError(message, error_type="NotSupportedError")


def _too_large(where: str, limit: int) -> UpstreamFailure:
    return _invalid(
        f"{where}: the response is too large: over {limit / 1024 / 1024:.2f} MB",
        "ResponseSizeError",
    )
