"""Reading the `http-request` node's response: size limits, status checks, outputs.

Responses are capped at Dify's sizes (1 MiB of text, 10 MiB otherwise) while they stream
in; 5xx and 429 become `StatusFailure` for the breaker and retries; a file response (an
attachment, or binary media that does not look like text) is not supported yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import Any

import httpx

from fanflow.executors.http_build import invalid, unsupported
from fanflow.resilience.upstreams import UpstreamFailure, parse_retry_after

#: Dify's HTTP_REQUEST_NODE_MAX_TEXT_SIZE and _MAX_BINARY_SIZE
MAX_TEXT_BYTES = 1024 * 1024
MAX_BINARY_BYTES = 10 * 1024 * 1024
_TEXT_APPLICATION_TYPES = ("json", "xml", "javascript", "x-www-form-urlencoded", "yaml", "graphql")
_TEXT_MARKERS = (b"{", b"[", b"<", b"function", b"var ", b"const ", b"let ")


@dataclass(frozen=True)
class HttpReply:
    status_code: int
    headers: dict[str, str]
    content: bytes
    encoding: str


class StatusFailure(UpstreamFailure):
    """A 5xx or 429: a failure for the breaker and retries, a plain reply for a node that
    does not fail on non-2xx statuses."""

    def __init__(self, message: str, reply: HttpReply, **kwargs: Any) -> None:
        super().__init__(message, status_code=reply.status_code, **kwargs)
        self.reply = reply


async def read_reply(response: httpx.Response, where: str) -> HttpReply:
    """The whole body, refused as soon as it passes its size limit."""
    content_type = response.headers.get("content-type", "")
    limit = MAX_TEXT_BYTES if _is_text_type(content_type) else MAX_BINARY_BYTES
    return await read_capped(response, limit, lambda: _too_large(where, limit))


async def read_capped(
    response: httpx.Response, limit: int, too_large: Callable[[], Exception]
) -> HttpReply:
    """The whole body; `too_large()` is raised as soon as it (or its declared length)
    passes `limit` bytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
    return HttpReply(
        status_code=response.status_code,
        headers=dict(response.headers),
        content=b"".join(chunks),
        encoding=response.encoding or "utf-8",
    )


def transport_failure(exc: httpx.TransportError, where: str, error_type: str) -> UpstreamFailure:
    """httpx's transport error as a retryable failure: `connect` (refused, unreachable, any
    other transport error) or `timeout`."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        message, reason = f"{where}: cannot connect: {exc or type(exc).__name__}", "connect"
    elif isinstance(exc, httpx.TimeoutException):
        message, reason = f"{where}: timed out ({type(exc).__name__})", "timeout"
    else:
        message, reason = f"{where}: {type(exc).__name__}: {exc}", "connect"
    return UpstreamFailure(message, reason=reason, retryable=True, error_type=error_type)


def check_status(reply: HttpReply, where: str) -> HttpReply:
    """5xx and 429 are failures for the breaker and the retries (the caller may still
    take them as replies)."""
    message = f"{where}: Request failed with status code {reply.status_code}"
    if reply.status_code >= 500:
        raise StatusFailure(
            message, reply, reason="status_5xx", retryable=True, error_type="HTTPResponseCodeError"
        )
    if reply.status_code == 429:
        raise StatusFailure(
            message,
            reply,
            reason="status_429",
            retryable=True,
            retry_after_s=parse_retry_after(reply.headers.get("retry-after")),
            error_type="HTTPResponseCodeError",
        )
    return reply


def reply_outputs(reply: HttpReply, label: str) -> dict[str, Any]:
    """The node's outputs: `status_code`, `body` (text), `headers`, `files` (always [])."""
    if reply.content and _is_file(reply):
        kind = reply.headers.get("content-type") or "no content type"
        raise unsupported(
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


def _is_file(reply: HttpReply) -> bool:
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


def _too_large(where: str, limit: int) -> UpstreamFailure:
    return invalid(
        f"{where}: the response is too large: over {limit / 1024 / 1024:.2f} MB",
        "ResponseSizeError",
    )
