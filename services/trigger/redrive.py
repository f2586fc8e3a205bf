"""`POST /v1/workflows/run/{id}/redrive` (fanflow): restart a failed or stopped run from its
failed nodes. Succeeded nodes and the items of a top-level iteration that succeeded keep
their outputs and do not run again (`fanflow.scheduler.redrive`)."""

from __future__ import annotations

import asyncio
from typing import Any

from fanflow_services.trigger.api import AppDep, TriggerDep, _own_run
from fanflow_services.trigger.errors import ApiError, error_responses, invalid_param
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from fanflow.scheduler.redrive import REDRIVABLE, NotRedrivable
from fanflow.store import RunNotFound

router = APIRouter(
    prefix="/v1", tags=["Service API (fanflow)"], responses=error_responses(401, 404)
)


def _not_redrivable(message: str) -> ApiError:
    return ApiError(409, "run_not_redrivable", message)


@router.post(
    "/workflows/run/{workflow_run_id}/redrive",
    summary="Redrive Workflow Run",
    status_code=202,
    responses={
        202: {"description": "the run is running again; poll its detail"},
        400: {"description": "a chatflow turn"},
        409: {"description": "the run is not failed or stopped"},
    },
)
async def redrive_run(workflow_run_id: str, app: AppDep, trigger: TriggerDep) -> Any:
    run = await _own_run(trigger, app, workflow_run_id)
    if app.mode != "workflow":
        raise invalid_param("redrive: only workflow runs, not chatflow turns, can be redriven")
    if run.status not in REDRIVABLE:
        raise _not_redrivable(
            f"run {run.id} is {run.status}: only failed or stopped runs can be redriven"
        )
    if app.id not in trigger.driver.workflows:
        await asyncio.to_thread(trigger.driver.workflows.get, app)
    try:
        committed, count = await trigger.driver.redrive(app, run.id)
    except NotRedrivable as exc:  # lost a race with another redrive
        raise _not_redrivable(str(exc)) from None
    except RunNotFound:
        raise _not_redrivable(f"run {run.id} vanished") from None
    await trigger.publish(run.id, committed)
    return JSONResponse(
        {
            "task_id": run.id,
            "workflow_run_id": run.id,
            "data": {"id": run.id, "status": "running", "redrive_count": count},
        },
        status_code=202,
        headers={"Location": f"/v1/workflows/run/{run.id}"},
    )
