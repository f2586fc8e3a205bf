"""Batch runs (fanflow): `POST /v1/workflows/batch` with a CSV (a header row naming the start
form's variables) or JSONL body (one JSON object of inputs per line) makes one run per row,
at most `concurrency` at a time; `GET /v1/workflows/batch/{id}` reports progress and the
rows' run ids. Rows are claimed atomically in the database, so no row runs twice.

Limit: the rows are driven by the trigger that accepted the batch; rows still pending when
it stops stay pending.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
from typing import Annotated, Any

from fanflow_services.trigger import async_runs
from fanflow_services.trigger.api import AppDep, TriggerDep
from fanflow_services.trigger.bodies import read_body
from fanflow_services.trigger.context import Trigger
from fanflow_services.trigger.errors import error_responses, invalid_param, not_found
from fanflow_services.trigger.json_guard import nesting_error, text_error
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from fanflow.errors import InputsInvalid
from fanflow.runtime import RunRequest
from fanflow.store import AppBusy, AppRecord
from fanflow.store.batches import INVALID, PENDING, RUNNING

log = logging.getLogger("fanflow.trigger")
router = APIRouter(
    prefix="/v1", tags=["Service API (fanflow)"], responses=error_responses(400, 401, 404, 413)
)

MAX_ROWS = 10_000
MAX_CONCURRENCY = 100
#: a batch body may be larger than a run's
MAX_BATCH_BYTES = 16 * 1024 * 1024
_BUSY_WAIT_S = 0.5


def parse_rows(raw: bytes, content_type: str) -> list[dict[str, Any]]:
    """The rows of a CSV or JSONL body (400 naming the row that is wrong)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise invalid_param("batch body: expected UTF-8 text") from None
    rows: list[dict[str, Any]] = []
    if "csv" in content_type:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise invalid_param("batch CSV: expected a header row naming the inputs")
        for number, record in enumerate(reader, start=2):
            if None in record:
                raise invalid_param(f"batch CSV line {number}: more fields than the header")
            rows.append({k: v for k, v in record.items() if v is not None})
    elif "json" in content_type:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            too_deep = nesting_error(line.encode())
            if too_deep is not None:
                raise invalid_param(f"batch JSONL line {number}: {too_deep}")
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise invalid_param(f"batch JSONL line {number}: not JSON: {exc}") from None
            if not isinstance(record, dict):
                raise invalid_param(f"batch JSONL line {number}: expected an object of inputs")
            rows.append(record)
    else:
        raise invalid_param(
            "batch body: Content-Type must be text/csv or application/jsonl "
            f"(application/x-ndjson), got {content_type!r}"
        )
    if len(rows) > MAX_ROWS:
        raise invalid_param(f"batch: at most {MAX_ROWS} rows, got {len(rows)}")
    bad = text_error(rows)
    if bad is not None:
        raise invalid_param(bad)
    return rows


@router.post("/workflows/batch", summary="Start Batch Runs", status_code=202)
async def start_batch(
    request: Request,
    app: AppDep,
    trigger: TriggerDep,
    user: Annotated[str, Query(min_length=1, max_length=255)],
    concurrency: Annotated[int, Query(ge=1, le=MAX_CONCURRENCY)] = 5,
) -> JSONResponse:
    """One run per row, `concurrency` at a time; answers 202 with the batch id."""
    if app.mode != "workflow":
        raise invalid_param("batch: only workflow apps run batches")
    raw = await read_body(request, MAX_BATCH_BYTES)
    rows = parse_rows(raw, request.headers.get("content-type", "").lower())
    if not rows:
        raise invalid_param("batch: no rows")
    batch_id = await trigger.store.batches.create(app.id, user, rows, concurrency=concurrency)
    task = asyncio.create_task(_drive(trigger, app, batch_id, user, concurrency))
    trigger.background.add(task)
    task.add_done_callback(trigger.background.discard)
    return JSONResponse(
        {"id": batch_id, "total": len(rows), "concurrency": concurrency},
        status_code=202,
        headers={"Location": f"/v1/workflows/batch/{batch_id}"},
    )


async def _drive(trigger: Trigger, app: AppRecord, batch_id: str, user: str, n: int) -> None:
    await asyncio.gather(*(_lane(trigger, app, batch_id, user) for _ in range(n)))


async def _lane(trigger: Trigger, app: AppRecord, batch_id: str, user: str) -> None:
    """Claim a row, run it to its end, repeat: one of the batch's `concurrency` lanes."""
    batches = trigger.store.batches
    while (claimed := await batches.claim_next(batch_id)) is not None:
        index, inputs, run_id = claimed
        watch = await trigger.events.watch(run_id, stream=False)
        try:
            while True:
                try:
                    outbox_ids = await trigger.driver.start_run(
                        app,
                        run_id,
                        RunRequest(inputs=inputs, user=user),
                        max_running=trigger.settings.app_max_active_runs,
                    )
                    break
                except AppBusy:
                    await asyncio.sleep(_BUSY_WAIT_S)
        except InputsInvalid as exc:
            watch.close()
            await batches.finish_row(batch_id, index, INVALID, error=str(exc))
            continue
        except BaseException:
            watch.close()
            raise
        await trigger.publish(run_id, outbox_ids)
        try:
            run = await async_runs.wait_finished(
                trigger, watch, trigger.settings.max_run_seconds + 60
            )
        finally:
            watch.close()
        if run is None:
            return  # the trigger is stopping
        await batches.finish_row(batch_id, index, run.status, error=run.error)


@router.get("/workflows/batch/{batch_id}", summary="Get Batch Progress")
async def batch_progress(
    batch_id: str,
    app: AppDep,
    trigger: TriggerDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> dict[str, Any]:
    """Counts by status, whether the batch is done, and its rows (index, run id, status)."""
    bad = text_error(batch_id, where="batch_id")
    batch = None if bad is not None else await trigger.store.batches.get(batch_id)
    if batch is None or batch.app_id != app.id:
        raise not_found("Batch not found.")
    rows = await trigger.store.batches.rows(batch_id, offset=offset, limit=limit)
    open_rows = batch.counts.get(PENDING, 0) + batch.counts.get(RUNNING, 0)
    return {
        "id": batch.id,
        "total": batch.total,
        "concurrency": batch.concurrency,
        "status": "running" if open_rows else "finished",
        "counts": batch.counts,
        "rows": [
            {"index": r.index, "run_id": r.run_id, "status": r.status, "error": r.error}
            for r in rows
        ],
    }
