"""Building the `http-request` node's request from its Dify fields (no I/O here).

`method`; `url`, `headers` and `params` with `{{#node.var#}}` references (headers and
params are `key:value` lines); `authorization`; `body` (none, raw-text, json,
x-www-form-urlencoded, form-data text items); `timeout`, capped at Dify's maximums;
`ssl_verify`. A JSON body that is not JSON is repaired (json-repair) as current Dify does;
a form-data file item whose variable holds no file is left out. Invalid fields raise `UpstreamFailure` with reason "invalid" (no retry fixes
them); what fanflow does not support yet raises `NodeError` (NotSupportedError).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import json_repair

from fanflow.errors import NodeError
from fanflow.messages import NodeTask
from fanflow.resilience.upstreams import UpstreamFailure
from fanflow.variables import Lookup, render

#: Dify's HTTP_REQUEST_MAX_{CONNECT,READ,WRITE}_TIMEOUT: defaults and caps of `timeout`
MAX_CONNECT_TIMEOUT_S = 10.0
MAX_READ_TIMEOUT_S = 600.0
MAX_WRITE_TIMEOUT_S = 600.0

METHODS = frozenset({"get", "head", "post", "put", "patch", "delete", "options"})
_DEFAULT_CONTENT_TYPES = {
    "json": "application/json",
    "x-www-form-urlencoded": "application/x-www-form-urlencoded",
    "raw-text": "text/plain",
}
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token
_HEADER_VALUE_BREAK = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9110: no CTL but HTAB


@dataclass(frozen=True)
class HttpRequest:
    """The request as the node's fields define it, ready to send (redirects aside)."""

    method: str
    url: httpx.URL
    headers: dict[str, str]
    #: the header carrying the node's credentials (dropped on a cross-origin redirect)
    auth_header: str | None
    content: bytes
    timeout: httpx.Timeout
    ssl_verify: bool


def build_request(task: NodeTask, label: str) -> HttpRequest:
    """The node's request, its `{{#node.var#}}` references rendered; `label` names the node
    in error messages."""
    data = task.data
    lookup = task.lookup
    method = str(data.get("method") or "get").lower()
    if method not in METHODS:
        raise invalid(
            f"{label}: Invalid http method {data.get('method')!r}", "InvalidHttpMethodError"
        )
    url = _url(render(str(data.get("url") or ""), lookup), _params(data, lookup), label)
    headers = _headers(str(data.get("headers") or ""), lookup, label)
    auth_header = _authorize(data.get("authorization"), headers, lookup, label)
    content = _body(data.get("body"), headers, lookup, label)
    return HttpRequest(
        method=method.upper(),
        url=url,
        headers=headers,
        auth_header=auth_header,
        content=content,
        timeout=request_timeout(data.get("timeout")),
        ssl_verify=_ssl_verify(data.get("ssl_verify"), label),
    )


def _url(text: str, params: list[tuple[str, str]], label: str) -> httpx.URL:
    if not text:
        raise invalid(f"{label}: url is required", "InvalidURLError")
    if not text.startswith(("http://", "https://")):
        raise invalid(
            f"{label}: url should start with http:// or https://, got {text!r}", "InvalidURLError"
        )
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise invalid(f"{label}: invalid url {text!r}: {exc}", "InvalidURLError") from exc
    if not url.host:
        raise invalid(f"{label}: url {text!r} has no host", "InvalidURLError")
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


def _headers(template: str, lookup: Lookup, label: str) -> dict[str, str]:
    # split the template first, then render each key and value on its own: a rendered
    # value holding a line break must not become a header of its own
    headers: dict[str, str] = {}
    for raw_key, raw_value in _lines(template):
        key, value = render(raw_key, lookup).strip(), render(raw_value, lookup).strip()
        if not key:
            continue
        if not _HEADER_NAME.fullmatch(key):
            raise invalid(f"{label}: {key!r} is not a valid header name", "InvalidHeaderError")
        _check_header_value(key, value, label)
        _set_header(headers, key, value)
    return headers


def _check_header_value(name: str, value: str, label: str) -> None:
    """A header value may not hold a line break or another control character but tab."""
    bad = _HEADER_VALUE_BREAK.search(value)
    if bad is not None:
        raise invalid(
            f"{label}: header {name!r}: its value contains {bad.group()!r} "
            "(line breaks and control characters are not allowed in a header)",
            "InvalidHeaderError",
        )


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
        raise invalid(
            f"{label}: authorization must be no-auth, or api-key with a config",
            "AuthorizationConfigError",
        )
    api_key = render(str(config.get("api_key") or ""), lookup)
    if not api_key.strip():
        raise invalid(
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
        raise invalid(
            f"{label}: authorization.config.type must be basic, bearer or custom, got {kind!r}",
            "AuthorizationConfigError",
        )
    if not _HEADER_NAME.fullmatch(header):
        raise invalid(
            f"{label}: authorization header {header!r} is not a valid header name",
            "AuthorizationConfigError",
        )
    _check_header_value(header, value, label)
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
            raise invalid(
                f"{label}: {kind} body type should have exactly one item", "RequestBodyError"
            )
        text = render(str(items[0].get("value") or ""), lookup)
        if kind == "json":
            text = _json_body(text, label)
        content = text.encode()
    elif kind == "x-www-form-urlencoded":
        fields = {
            render(str(i.get("key") or ""), lookup): render(str(i.get("value") or ""), lookup)
            for i in items
        }
        content = urlencode(fields).encode()
    elif kind == "form-data":
        # a file item whose variable holds no file is left out, and the request sent (Dify)
        items = [item for item in items if item.get("type") != "file" or _has_file(item, lookup)]
        if any(item.get("type") == "file" for item in items):
            raise unsupported(
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
        raise unsupported(f"{label}: binary bodies (a file variable) are not supported yet")
    else:
        raise invalid(f"{label}: unknown body type {kind!r}", "RequestBodyError")
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = _DEFAULT_CONTENT_TYPES[kind]
    return content


def _json_body(text: str, label: str) -> str:
    """The JSON body, compact; broken JSON (a missing comma, a trailing one, single quotes)
    is repaired first, as current Dify does; what no repair makes JSON is refused."""
    try:
        return json.dumps(json.loads(text, strict=False), ensure_ascii=False)
    except json.JSONDecodeError as exc:
        error = exc
    repaired = json_repair.loads(text)
    opened = text.lstrip()[:1]
    kept_shape = {"{": dict, "[": list}.get(opened, object)
    if (repaired in ("", None) and text.strip() not in ('""', "null")) or not isinstance(
        repaired, kept_shape
    ):
        raise invalid(f"{label}: Failed to parse JSON ({error}): {text[:200]}", "RequestBodyError")
    return json.dumps(repaired, ensure_ascii=False)


def _has_file(item: Mapping[str, Any], lookup: Lookup) -> bool:
    selector = item.get("file") or item.get("value_selector")
    if not (isinstance(selector, list) and len(selector) >= 2):
        return False
    try:
        value = lookup([str(part) for part in selector])
    except KeyError:
        return False
    return value not in (None, "", [], {})


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


def request_timeout(raw: Any) -> httpx.Timeout:
    """The `timeout` field in seconds; missing, invalid or too large values take the caps."""
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
    raise invalid(f"{label}: ssl_verify must be true or false, got {raw!r}", "InvalidConfigError")


def status_fails_node(data: Mapping[str, Any]) -> bool:
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


# errors, shared with http_response and http_request


def invalid(message: str, error_type: str) -> UpstreamFailure:
    """A request or reply no retry can fix."""
    return UpstreamFailure(message, reason="invalid", retryable=False, error_type=error_type)


def unsupported(message: str) -> NodeError:
    return NodeError(message, error_type="NotSupportedError")
