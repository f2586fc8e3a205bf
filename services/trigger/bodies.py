"""Request bodies read with a size cap (413 past it), before anything parses them."""

from __future__ import annotations

import json
from typing import Any

from fanflow_services.trigger.errors import ApiError, invalid_param
from fanflow_services.trigger.json_guard import nesting_error, text_error
from fastapi import Request

#: the largest /v1 request body (inputs travel in the run's state; keep them small)
MAX_REQUEST_BYTES = 1024 * 1024


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "request_too_large", f"the request body is over {max_bytes} bytes")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, or 413 as soon as it (or its declared length) passes `max_bytes`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(body)


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; 400 invalid_param when it is not one, when it nests
    deeper than `MAX_JSON_DEPTH` (checked before parsing) or when a string in it cannot be
    stored (a lone surrogate, a NUL). Messages name the field."""
    return parse_json_object(await read_body(request, max_bytes))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """`read_json_object` on bytes already read."""
    too_deep = nesting_error(raw)
    if too_deep is not None:
        raise invalid_param(too_deep)
    try:
        payload = json.loads(raw or b"null")
    except (ValueError, RecursionError) as exc:
        raise invalid_param(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise invalid_param("the request body must be a JSON object")
    bad_text = text_error(payload)
    if bad_text is not None:
        raise invalid_param(bad_text)
    return payload
