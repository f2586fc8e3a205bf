"""Dify's Service API for workflow apps, under /v1 (`Authorization: Bearer <app key>`)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fanflow_services.trigger import async_runs, callbacks, payloads
from fanflow_services.trigger.bodies import read_json_object
from fanflow_services.trigger.context import Trigger, get_trigger
from fanflow_services.trigger.errors import (
    ApiError,
    error_responses,
    invalid_param,
    not_found,
    unauthorized,
)
from fanflow_services.trigger.json_guard import storable, text_error
from fanflow_services.trigger.resilient import (
    RUN_ID_HEADER,
    final_run,
    patiently,
    peek_run,
    start_run,
)
from fanflow_services.trigger.streams import RECHECK_S, RunWatch, Shutdown
from fastapi import APIRouter, Depends, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from fanflow.errors import InputsInvalid
from fanflow.mesh.driver import FINISHED, Envelope
from fanflow.runtime import RunRequest
from fanflow.scheduler import StopRequested
from fanflow.store import AppBusy, AppRecord, RunRecord
from fanflow.vocabulary import FINISHED_STATUSES, RunStatus

log = logging.getLogger("fanflow.trigger")
router = APIRouter(
    prefix="/v1", tags=["Service API"], responses=error_responses(400, 401, 404, 413, 429, 503)
)

#: keep-alive comment interval of an SSE stream (Dify: 10 s)
PING_INTERVAL_S = 10.0
_LOG_STATUSES = frozenset({RunStatus.RUNNING, *FINISHED_STATUSES})

TriggerDep = Annotated[Trigger, Depends(get_trigger)]


async def app_for_key(request: Request, trigger: TriggerDep) -> AppRecord:
    """The app of the request's `Authorization: Bearer <key>`; 401 otherwise."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise unauthorized("Authorization header must be provided and start with 'Bearer'")
    app: AppRecord | None = await patiently(
        lambda: trigger.store.app_for_key(key.strip()), "checking an API key"
    )
    if app is None:
        raise unauthorized("Access token is invalid")
    return app


AppDep = Annotated[AppRecord, Depends(app_for_key)]


class RunBody(BaseModel):
    """`WorkflowExecutionRequest`."""

    model_config = ConfigDict(extra="ignore")

    inputs: dict[str, Any]
    #: `async` (fanflow): 202 with the run id at once (`async_runs`)
    response_mode: Literal["blocking", "streaming", "async"] = "blocking"
    user: str
    files: list[dict[str, Any]] | None = None
    #: fanflow: an async run's `workflow_finished` is POSTed here, signed (`callbacks`)
    callback_url: str | None = None


def _parse_run_body(raw: dict[str, Any]) -> RunBody:
    try:
        return RunBody.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise invalid_param(f"{field}: {first['msg']}") from None


def _too_many_runs(max_running: int) -> ApiError:
    return ApiError(
        429,
        "too_many_requests",
        f"Too many requests: the app has {max_running} run(s) in progress already. "
        "Please try again later.",
    )


async def _own_run(trigger: Trigger, app: AppRecord, run_id: str) -> RunRecord:
    if not storable(run_id):  # no run id holds a NUL or a lone surrogate
        raise not_found("Workflow run not found.")
    run: RunRecord | None = await trigger.store.get_run(run_id)
    if run is None or run.app_id != app.id:
        raise not_found("Workflow run not found.")
    return run


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    # bodies are read by hand (size cap, then Dify's error shapes): document them here
    schema = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"required": True, "content": schema}}


@router.post(
    "/workflows/run",
    summary="Run Workflow",
    openapi_extra=_json_body(RunBody),
    responses={
        200: {
            "description": "`blocking`: the finished run; `streaming`: its events (SSE)",
            "content": {"application/json": {}, "text/event-stream": {}},
        },
        202: {"description": "`async` (fanflow): the run's id; it goes on"},
        409: {"description": "`Idempotency-Key` used with another body (fanflow)"},
    },
)
async def run_workflow(request: Request, app: AppDep, trigger: TriggerDep) -> Any:
    """Start a run; answer when it ends (`blocking`) or stream its events (`streaming`).

    Checks in order: the key (401), the app's runs in progress (429), the body's size (413),
    the body and the inputs (400).
    """
    settings = trigger.settings
    if trigger.events.shutting_down:
        raise ApiError(503, "service_unavailable", "the trigger is shutting down; retry")
    max_running = settings.app_max_active_runs
    # a cheap early answer; the count that decides is atomic with the run's creation (a
    # submit with an idempotency key may be the replay of a run in progress: not here)
    keyed = async_runs.KEY_HEADER in request.headers
    if (
        not keyed
        and await patiently(lambda: trigger.store.count_running(app.id), "counting runs")
        >= max_running
    ):
        raise _too_many_runs(max_running)
    raw = await read_json_object(request, trigger.max_request_bytes)
    body = _parse_run_body(raw)
    submit = async_runs.read_submit(request, raw, body.response_mode)
    if submit.callback_url is not None:
        await callbacks.check_url(settings, submit.callback_url)
    if app.id not in trigger.driver.workflows:
        # an app's first run here parses its DSL (seconds for a large one): not on the loop
        await asyncio.to_thread(trigger.driver.workflows.get, app)
    run_id = str(uuid.uuid4())
    if submit.key is not None:
        held = await async_runs.claim(trigger, app, submit, run_id)
        if not held.created:
            existing = await async_runs.existing_run(trigger, app, submit, held)
            return await async_runs.replay(trigger, submit, existing)
    streaming = submit.mode == "streaming"
    # bound before the run starts: its first events are published by this very request
    try:
        watch = await trigger.events.watch(run_id, stream=streaming)
    except BaseException:
        await _release(trigger, app, submit, run_id)
        raise
    try:
        outbox_ids = await start_run(
            trigger,
            app,
            run_id,
            RunRequest(inputs=body.inputs, user=body.user, files=tuple(body.files or ())),
            max_running=max_running,
        )
    except InputsInvalid as exc:
        watch.close()
        await _release(trigger, app, submit, run_id)
        raise invalid_param(str(exc)) from None
    except AppBusy:
        watch.close()
        await _release(trigger, app, submit, run_id)
        raise _too_many_runs(max_running) from None
    except BaseException:
        watch.close()
        await _release(trigger, app, submit, run_id)
        raise
    await trigger.publish(run_id, outbox_ids)
    if submit.mode == async_runs.ASYNC:
        if submit.callback_url is not None:
            callbacks.start(trigger, app, watch, submit.callback_url)
        else:
            watch.close()
        return async_runs.accepted(run_id)
    if streaming:
        return StreamingResponse(
            _stream(trigger, watch, app),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", RUN_ID_HEADER: run_id},
        )
    # the headers (with the run id) go out now, the body when the run ends
    return StreamingResponse(
        _blocking(trigger, watch, settings.blocking_timeout_s),
        media_type="application/json",
        headers={RUN_ID_HEADER: run_id},
    )


async def _blocking(trigger: Trigger, watch: RunWatch, timeout_s: float) -> AsyncIterator[bytes]:
    try:
        await _wait_finished(trigger, watch, timeout_s)
    finally:
        watch.close()
    body = payloads.blocking_response(await final_run(trigger, watch.run_id))
    yield json.dumps(jsonable_encoder(body), ensure_ascii=False).encode()


async def _release(
    trigger: Trigger, app: AppRecord, submit: async_runs.Submit, run_id: str
) -> None:
    """A run that did not start gives its idempotency key back."""
    if submit.key is not None:
        await trigger.store.idempotency.release(app.id, submit.key, run_id)


async def _wait_finished(trigger: Trigger, watch: RunWatch, timeout_s: float) -> None:
    """Until the run's `workflow_finished` event resolves the watch, or `timeout_s`.

    Every RECHECK_S without the event the store is read once: a safety net for an event
    lost while the subscription reconnected.
    """
    loop_time = asyncio.get_running_loop().time
    deadline = loop_time() + timeout_s
    while (left := deadline - loop_time()) > 0:
        if await watch.wait_finished(min(left, RECHECK_S)) is not None:
            return
        if trigger.events.shutting_down:
            return
        run = await peek_run(trigger, watch.run_id)
        if run is not None and run.status in FINISHED:
            return


async def _stream(trigger: Trigger, watch: RunWatch, app: AppRecord) -> AsyncIterator[bytes]:
    formatter = payloads.StreamFormatter(watch.run_id, workflow_id=app.id)
    try:
        while True:
            event = await watch.next(PING_INTERVAL_S)
            if isinstance(event, Shutdown):
                yield payloads.sse(
                    formatter.error(
                        503,
                        "service_unavailable",
                        "the trigger is shutting down; the run goes on: "
                        f"GET /v1/workflows/run/{watch.run_id}",
                    )
                )
                return
            if event is None:  # quiet for a ping interval: keep alive, and the safety net
                run = await peek_run(trigger, watch.run_id)
                if run is not None and run.status in FINISHED:
                    yield payloads.sse(formatter.finished(run))
                    return
                yield payloads.PING
                continue
            if not formatter.is_new(event):
                continue
            if event.name == payloads.WORKFLOW_FINISHED:
                yield payloads.sse(formatter.finished(await final_run(trigger, watch.run_id)))
                return
            yield payloads.sse(formatter.convert(event))
    except Exception:
        # the detail is in the log, never in the stream
        log.exception("streaming run %s failed", watch.run_id)
        message = f"Internal error; the run goes on: GET /v1/workflows/run/{watch.run_id}"
        yield payloads.sse(formatter.error(500, "internal_server_error", message))
    finally:
        watch.close()


@router.get("/workflows/run/{workflow_run_id}", summary="Get Workflow Run Detail")
async def run_detail(workflow_run_id: str, app: AppDep, trigger: TriggerDep) -> dict[str, Any]:
    detail: dict[str, Any] = payloads.run_detail(await _own_run(trigger, app, workflow_run_id))
    return detail


class StopBody(BaseModel):
    user: str


@router.post(
    "/workflows/tasks/{task_id}/stop",
    summary="Stop Workflow Task",
    openapi_extra=_json_body(StopBody),
)
async def stop_task(
    task_id: str, request: Request, app: AppDep, trigger: TriggerDep
) -> dict[str, str]:
    """Stop a run (the task id is the run id). Stopping a finished run is a no-op."""
    raw = await read_json_object(request, trigger.max_request_bytes)
    if not isinstance(raw.get("user"), str) or not raw["user"]:
        raise invalid_param("user: Arg user must be provided.")
    run = await _own_run(trigger, app, task_id)
    if run.status not in FINISHED:
        outbox_ids = await trigger.driver.apply(app, run.id, [Envelope(StopRequested())])
        await trigger.publish(run.id, outbox_ids)
    return {"result": "success"}


@router.get("/workflows/logs", summary="List Workflow Logs")
async def workflow_logs(
    app: AppDep,
    trigger: TriggerDep,
    keyword: str | None = None,
    status: str | None = None,
    page: Annotated[int, Query(ge=1, le=99999)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """The app's runs, newest first; `keyword` matches run id, user, inputs and outputs."""
    if status is not None and status not in _LOG_STATUSES:
        raise invalid_param(f"status: expected one of {', '.join(sorted(_LOG_STATUSES))}")
    bad_keyword = text_error(keyword, where="keyword")
    if bad_keyword is not None:
        raise invalid_param(bad_keyword)
    runs, total = await trigger.store.list_runs(
        app.id, status=status, keyword=keyword or None, page=page, limit=limit
    )
    logs: dict[str, Any] = payloads.logs_page(runs, total, app, page=page, limit=limit)
    return logs
