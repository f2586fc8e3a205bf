"""One chat completion against an OpenAI-compatible endpoint, with its failures classified.

`chat()` resolves nothing and retries nothing itself: each attempt is one HTTP request
(plus the caller's check of the reply), and `context.upstreams` — breakers, rate limits,
retries per upstream — decides what happens around it. Every failure is an
`UpstreamFailure` whose `reason` says what kind it was: `timeout`, `connect`, `status_5xx`,
`status_429` (with the server's Retry-After), `status_4xx` (not retryable), `format` (a
reply that is not the JSON asked for).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from fanflow.http_pool import ssl_context, without_cookies
from fanflow.llm.providers import Endpoint
from fanflow.resilience.redis_limits import CallKeys, estimate_tokens
from fanflow.resilience.upstreams import UpstreamFailure, parse_retry_after

T = TypeVar("T")
#: the header naming the calling node (`fanflow mock-llm` answers by it)
NODE_ID_HEADER = "X-Fanflow-Node-Id"
#: how much of an error body goes into a node's error message
_MAX_DETAIL_CHARS = 300


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_s: float = 0.0
    #: the model's price (`fanflow.llm.costs.Price`) when the prices file has one
    price: Any = None

    def as_output(self) -> dict[str, Any]:
        """The `usage` output in Dify's shape (prices 0 for a model the prices file lacks)."""
        price = self.price
        prompt_price = price.prompt_cost(self.prompt_tokens) if price else 0.0
        completion_price = price.completion_cost(self.completion_tokens) if price else 0.0
        unit = 1 / price.per if price else 0.0
        return {
            "prompt_tokens": self.prompt_tokens,
            "prompt_unit_price": price.prompt if price else 0.0,
            "prompt_price_unit": unit,
            "prompt_price": round(prompt_price, 9),
            "completion_tokens": self.completion_tokens,
            "completion_unit_price": price.completion if price else 0.0,
            "completion_price_unit": unit,
            "completion_price": round(completion_price, 9),
            "total_tokens": self.total_tokens,
            "total_price": round(prompt_price + completion_price, 9),
            "currency": price.currency if price else "USD",
            "latency": round(self.latency_s, 3),
            "time_to_first_token": None,
            "time_to_generate": None,
        }


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str


@dataclass(frozen=True)
class Completion:
    """The first choice of a chat completion."""

    text: str
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    tool_calls: tuple[ToolCall, ...] = ()
    #: which model answered, when the call had fallbacks (`fanflow.llm.failover.ModelAnswer`)
    answered_by: Any = None


def format_failure(message: str) -> UpstreamFailure:
    """A reply that is not what was asked for: worth another attempt."""
    return UpstreamFailure(message, reason="format", retryable=True)


async def chat(
    endpoint: Endpoint,
    body: Mapping[str, Any],
    *,
    label: str,
    timeout_s: float,
    http_client: httpx.AsyncClient | None = None,
    upstreams: Any = None,
    check: Callable[[Completion], T] | None = None,
    node_id: str | None = None,
    keys: CallKeys | None = None,
    on_billed: Callable[[Completion], Awaitable[Completion]] | None = None,
) -> tuple[Completion, T | None]:
    """POST `body` (without `model`: the endpoint's is used) to `{base_url}/chat/completions`.

    `http_client` is the upstream's pooled client (`HttpPool.llm_client`); without one, a
    client is built for this call. `check` runs on each reply inside the attempt, so a `format` failure it raises counts
    as that attempt's failure; its result is returned beside the completion. `label` (the
    node) leads every error message; `node_id` goes out as the `X-Fanflow-Node-Id` header.
    `keys` (app, end user) are for the upstreams' per-app and per-user limits; fleet-wide
    token limits are charged an estimate from `body` and corrected with the reported usage.
    `on_billed` sees every answer the model billed (retried attempts too) before `check`.
    """
    payload = {"model": endpoint.model, **body}

    async def attempt(client: httpx.AsyncClient) -> tuple[Completion, T | None]:
        completion = await _post(
            client, endpoint, payload, label=label, timeout_s=timeout_s, node_id=node_id
        )
        if on_billed is not None:
            completion = await on_billed(completion)
        return completion, (check(completion) if check is not None else None)

    async def guarded(client: httpx.AsyncClient) -> tuple[Completion, T | None]:
        if upstreams is None:
            return await attempt(client)
        result: tuple[Completion, T | None] = await upstreams.call(
            endpoint.upstream,
            lambda: attempt(client),
            kind="llm",
            tokens=estimate_tokens(body),
            keys=keys,
            usage_of=_used_tokens,
        )
        return result

    if http_client is not None:
        return await guarded(http_client)
    # no pool (a test, a one-off call): a client for this call, the SSL context shared
    async with without_cookies(httpx.AsyncClient(verify=ssl_context())) as client:
        return await guarded(client)


def _used_tokens(result: tuple[Completion, Any]) -> float | None:
    """The tokens an answer says it used (None when it reports no usage: keep the
    estimate)."""
    usage = result[0].usage
    return float(usage.total_tokens) if usage.total_tokens else None


async def _post(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    payload: Mapping[str, Any],
    *,
    label: str,
    timeout_s: float,
    node_id: str | None = None,
) -> Completion:
    url = f"{endpoint.base_url}/chat/completions"
    where = f"{label}: LLM {endpoint.upstream} at {url}"
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    if node_id and node_id.isascii():  # header values are ASCII
        headers[NODE_ID_HEADER] = node_id
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            response = await client.post(url, json=payload, headers=headers, timeout=timeout_s)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise UpstreamFailure(
            f"{where}: no reply within {timeout_s:g} s", reason="timeout", retryable=True
        ) from exc
    except httpx.TransportError as exc:
        raise UpstreamFailure(
            f"{where}: {type(exc).__name__}: {exc}", reason="connect", retryable=True
        ) from exc
    latency_s = time.monotonic() - started
    if response.status_code != 200:
        raise _status_failure(where, response)
    try:
        reply = response.json()
    except ValueError as exc:
        raise format_failure(f"{where}: the reply is not JSON: {response.text[:80]!r}") from exc
    return _completion(reply, where=where, latency_s=latency_s)


def _status_failure(where: str, response: httpx.Response) -> UpstreamFailure:
    status = response.status_code
    message = f"{where}: HTTP {status}: {_detail(response)}"
    if status == 429:
        return UpstreamFailure(
            message,
            reason="status_429",
            retryable=True,
            retry_after_s=parse_retry_after(response.headers.get("retry-after")),
            status_code=status,
        )
    if status >= 500:
        return UpstreamFailure(message, reason="status_5xx", retryable=True, status_code=status)
    if status == 408:
        return UpstreamFailure(message, reason="timeout", retryable=True, status_code=status)
    return UpstreamFailure(message, reason="status_4xx", retryable=False, status_code=status)


def _detail(response: httpx.Response) -> str:
    """The provider's own error message (OpenAI: `{"error": {"message"}}`), else the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:_MAX_DETAIL_CHARS] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:_MAX_DETAIL_CHARS]
    if isinstance(error, str):
        return error[:_MAX_DETAIL_CHARS]
    return response.text[:_MAX_DETAIL_CHARS]


def _completion(reply: Any, *, where: str, latency_s: float) -> Completion:
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise format_failure(f"{where}: the reply has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise format_failure(f"{where}: the reply's first choice has no message")
    return Completion(
        text=_text(message.get("content")),
        finish_reason=choices[0].get("finish_reason"),
        usage=_usage(reply.get("usage"), latency_s),
        tool_calls=tuple(_tool_calls(message.get("tool_calls"))),
    )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text"
        )
    return ""


def _usage(usage: Any, latency_s: float) -> Usage:
    if not isinstance(usage, dict):
        return Usage(latency_s=latency_s)
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    total = _int(usage.get("total_tokens")) or prompt + completion
    return Usage(prompt, completion, total, latency_s)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _tool_calls(calls: Any) -> list[ToolCall]:
    found: list[ToolCall] = []
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if arguments is not None else {})
        found.append(ToolCall(str(function.get("name") or ""), arguments))
    return found
