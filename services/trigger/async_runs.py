"""Async submits and idempotency keys of `POST /v1/workflows/run` (fanflow extensions).

- `response_mode: "async"` in the body, or `X-Fanflow-Response-Mode: async` for clients
  whose schema only allows Dify's modes, answers 202 with the run id at once.
- `Idempotency-Key: <up to 255 characters>`: the same key and the same body within
  `FANFLOW_IDEMPOTENCY_RETENTION_S` give the same run (the answer carries
  `Idempotent-Replayed: true`); the same key with another body is 409. The key is claimed
  in the database before the run starts, so two concurrent submits make one run.
- `callback_url` in the body (or `X-Fanflow-Callback-Url`): see `callbacks`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from fanflow_services.trigger import payloads
from fanflow_services.trigger.context import Trigger
from fanflow_services.trigger.errors import ApiError, invalid_param
from fanflow_services.trigger.streams import RECHECK_S, RunWatch
from fastapi import Request
from fastapi.responses import JSONResponse

from fanflow.store import AppRecord, RunRecord
from fanflow.store.idempotency import Claim
from fanflow.vocabulary import FINISHED_STATUSES

ASYNC = "async"
MODE_HEADER = "x-fanflow-response-mode"
KEY_HEADER = "idempotency-key"
CALLBACK_HEADER = "x-fanflow-callback-url"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
#: how long a duplicate submit waits for the first one's run to exist
CLAIM_WAIT_S = 10.0


@dataclass(frozen=True)
class Submit:
    """What a run submit asks beyond Dify's body."""

    mode: str
    key: str | None
    body_hash: str
    callback_url: str | None


def read_submit(request: Request, raw: dict[str, Any], body_mode: str) -> Submit:
    """The submit's mode, idempotency key, body hash and callback (400 naming what is bad)."""
    header_mode = request.headers.get(MODE_HEADER)
    mode = body_mode
    if header_mode is not None:
        if header_mode.strip().lower() not in ("blocking", "streaming", ASYNC):
            raise invalid_param(
                f"{MODE_HEADER}: expected blocking, streaming or async, got {header_mode!r}"
            )
        mode = header_mode.strip().lower()
    key = request.headers.get(KEY_HEADER)
    if key is not None:
        key = key.strip()
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
            raise invalid_param(
                f"Idempotency-Key: expected 1 to {MAX_KEY_LENGTH} printable ASCII characters"
            )
        if mode == "streaming":
            raise invalid_param(
                "Idempotency-Key: applies to blocking and async runs, not to streaming ones"
            )
    callback = raw.get("callback_url", request.headers.get(CALLBACK_HEADER))
    if callback is not None and not isinstance(callback, str):
        raise invalid_param(f"callback_url: expected a URL string, got {type(callback).__name__}")
    if callback is not None and mode != ASYNC:
        raise invalid_param("callback_url: only async runs (response_mode async) call back")
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Submit(mode, key, hashlib.sha256(canonical.encode()).hexdigest(), callback)


def conflict(key: str) -> ApiError:
    return ApiError(
        409,
        "idempotency_key_conflict",
        f"Idempotency-Key {key!r} was used with another request body; use a new key",
    )


async def claim(trigger: Trigger, app: AppRecord, submit: Submit, run_id: str) -> Claim:
    assert submit.key is not None
    held: Claim = await trigger.store.idempotency.claim(
        app.id,
        submit.key,
        body_hash=submit.body_hash,
        run_id=run_id,
        retention_s=trigger.settings.idempotency_retention_s,
    )
    return held


async def existing_run(trigger: Trigger, app: AppRecord, submit: Submit, held: Claim) -> RunRecord:
    """The run of a key another submit claimed: 409 for another body; waits (bounded) for
    the run to exist when the claim is fresh. 409 too when it never appears."""
    assert submit.key is not None
    if held.body_hash != submit.body_hash:
        raise conflict(submit.key)
    deadline = time.monotonic() + CLAIM_WAIT_S
    while True:
        run: RunRecord | None = await trigger.store.get_run(held.run_id)
        if run is not None and run.app_id == app.id:
            return run
        if time.monotonic() > deadline or await trigger.store.idempotency.get(
            app.id, submit.key
        ) != Claim(held.run_id, held.body_hash, False, held.created_at):
            raise ApiError(
                409,
                "idempotency_key_in_progress",
                f"Idempotency-Key {submit.key!r}: the first request with it has not started "
                "its run (or failed to); retry",
            )
        await asyncio.sleep(0.05)


def accepted(run_id: str, *, replayed: bool = False) -> JSONResponse:
    """202: the run is under way; poll `GET /v1/workflows/run/{id}`."""
    headers = {"Location": f"/v1/workflows/run/{run_id}"}
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    return JSONResponse(
        {"task_id": run_id, "workflow_run_id": run_id, "data": {"id": run_id, "status": "running"}},
        status_code=202,
        headers=headers,
    )


async def replay(trigger: Trigger, submit: Submit, run: RunRecord) -> JSONResponse:
    """The answer to a repeated submit: 202 for async, the finished run for blocking."""
    if submit.mode == ASYNC:
        return accepted(run.id, replayed=True)
    watch = await trigger.events.watch(run.id, stream=False)
    try:
        await wait_finished(trigger, watch, trigger.settings.blocking_timeout_s)
    finally:
        watch.close()
    latest = await trigger.store.get_run(run.id)
    assert latest is not None
    return JSONResponse(payloads.blocking_response(latest), headers={REPLAYED_HEADER: "true"})


async def wait_finished(trigger: Trigger, watch: RunWatch, timeout_s: float) -> RunRecord | None:
    """The run once its `workflow_finished` arrived (or the store says so), else None."""
    loop_time = asyncio.get_running_loop().time
    deadline = loop_time() + timeout_s
    while (left := deadline - loop_time()) > 0:
        heard = await watch.wait_finished(min(left, RECHECK_S)) is not None
        if trigger.events.shutting_down and not heard:
            return None
        run: RunRecord | None = await trigger.store.get_run(watch.run_id)
        if run is not None and run.status in FINISHED_STATUSES:
            return run
    return None
