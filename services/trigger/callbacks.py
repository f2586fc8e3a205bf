"""Callbacks of async runs: the run's `workflow_finished` payload POSTed to `callback_url`.

- SSRF-guarded as http-request nodes are (`fanflow.resilience.ssrf`): the URL is checked at
  submit (400) and every delivery connects only to addresses checked then (no redirects
  followed); FANFLOW_HTTP_ALLOW_PRIVATE_NETWORKS / FANFLOW_HTTP_ALLOW_LIST opt out.
- Signed: `X-Fanflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(FANFLOW_CALLBACK_SECRET,
  "<t>.<body>")>`; a receiver recomputes it and rejects old timestamps (replays).
- Retried with exponential backoff on connection errors, timeouts, 408, 429 and 5xx, up to
  FANFLOW_CALLBACK_MAX_ATTEMPTS; every try is recorded (`store.idempotency.deliveries`).

Limit: deliveries are driven by the trigger that accepted the run; one pending when that
trigger stops is not resumed by another.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from fanflow_services.trigger import payloads
from fanflow_services.trigger.async_runs import wait_finished
from fanflow_services.trigger.context import Trigger
from fanflow_services.trigger.errors import invalid_param
from fanflow_services.trigger.streams import RunWatch

from fanflow.resilience.ssrf import AddressGuard, GuardedTransport, SsrfRefused
from fanflow.resilience.upstreams import UpstreamFailure
from fanflow.settings import Settings
from fanflow.store import AppRecord, RunRecord

log = logging.getLogger("fanflow.trigger")

SIGNATURE_HEADER = "X-Fanflow-Signature"
MAX_URL_LENGTH = 2048
_RETRY_STATUSES = frozenset({408, 425, 429})


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: float = 300) -> bool:
    """A receiver's check: the signature matches and is at most `tolerance_s` old."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


async def check_url(settings: Settings, url: str) -> None:
    """400 unless `url` is an http(s) URL a callback may reach (and callbacks can be signed)."""
    if not settings.callback_secret:
        raise invalid_param("callback_url: callbacks need FANFLOW_CALLBACK_SECRET on the trigger")
    parts = urlsplit(url)
    if len(url) > MAX_URL_LENGTH or parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid_param(
            f"callback_url: expected an http(s) URL of at most {MAX_URL_LENGTH} characters, "
            f"got {url[:100]!r}"
        )
    if settings.http_allow_private_networks:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        await AddressGuard(allow_list=settings.http_allow_list).addresses(parts.hostname, port)
    except SsrfRefused as exc:
        raise invalid_param(f"callback_url: {exc}") from None
    except (UpstreamFailure, ValueError) as exc:
        raise invalid_param(f"callback_url: {exc}") from None


def _client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.callback_timeout_s)
    if settings.http_allow_private_networks:
        return httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False)
    guard = AddressGuard(allow_list=settings.http_allow_list)
    transport = GuardedTransport(guard, ssl_context=ssl.create_default_context())
    return httpx.AsyncClient(
        transport=transport, timeout=timeout, trust_env=False, follow_redirects=False
    )


async def deliver(trigger: Trigger, run: RunRecord, app: AppRecord, url: str) -> bool:
    """POST the finished run to `url` until it answers 2xx or the tries run out."""
    settings = trigger.settings
    assert settings.callback_secret
    payload: dict[str, Any] = payloads.StreamFormatter(run.id, workflow_id=app.id).finished(run)
    body = json.dumps(payload, ensure_ascii=False).encode()
    async with _client(settings) as client:
        for attempt in range(1, settings.callback_max_attempts + 1):
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(settings.callback_secret, int(time.time()), body),
                "X-Fanflow-Run-Id": run.id,
                "X-Fanflow-Delivery-Attempt": str(attempt),
            }
            status: int | None = None
            error: str | None = None
            retry = True
            try:
                response = await client.post(url, content=body, headers=headers)
                status = response.status_code
                if 200 <= status < 300:
                    await trigger.store.idempotency.record_delivery(
                        run.id, url, attempt=attempt, status_code=status, error=None, delivered=True
                    )
                    return True
                error = f"answered {status}"
                retry = status >= 500 or status in _RETRY_STATUSES
            except SsrfRefused as exc:
                error, retry = str(exc), False
            except (httpx.HTTPError, UpstreamFailure, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            await trigger.store.idempotency.record_delivery(
                run.id, url, attempt=attempt, status_code=status, error=error, delivered=False
            )
            if not retry or attempt == settings.callback_max_attempts:
                log.warning("run %s: callback to %s not delivered: %s", run.id, url, error)
                return False
            await asyncio.sleep(settings.callback_backoff_s * 2 ** (attempt - 1))
    return False


def start(trigger: Trigger, app: AppRecord, watch: RunWatch, url: str) -> None:
    """Wait for the run's end in the background, then deliver its callback."""

    async def run_and_call_back() -> None:
        try:
            timeout = trigger.settings.max_run_seconds + 60
            run = await wait_finished(trigger, watch, timeout)
        finally:
            watch.close()
        if run is not None:
            await deliver(trigger, run, app, url)

    task = asyncio.create_task(run_and_call_back(), name=f"callback {watch.run_id}")
    trigger.background.add(task)
    task.add_done_callback(trigger.background.discard)
