"""Operations endpoints: `/healthz` (database, broker, event subscription) and `/metrics`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Annotated, Any

from fanflow_services.trigger.context import Trigger, get_trigger
from fanflow_services.trigger.errors import error_body, error_responses
from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("fanflow.trigger")
router = APIRouter(tags=["Operations"])
#: how long one health probe may take before it counts as down
PROBE_TIMEOUT_S = 3.0

TriggerDep = Annotated[Trigger, Depends(get_trigger)]


async def _probe(check: Awaitable[Any]) -> str:
    try:
        await asyncio.wait_for(check, PROBE_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {PROBE_TIMEOUT_S:g} s"
    except Exception as exc:
        # the detail (driver text, addresses, ports) belongs in the log, not the body
        log.warning("health probe failed: %r", exc)
        return "unavailable"
    return "ok"


@router.get("/healthz", summary="Health check", responses=error_responses(503))
async def healthz(trigger: TriggerDep) -> JSONResponse:
    """200 when the database answers, the broker answers and events flow; else 503."""
    checks = {
        # any query proves the connection; the store is the only module that speaks SQL
        "database": await _probe(trigger.store.get_app("healthz")),
        "broker": await _probe(trigger.broker.message_count(trigger.broker.topology.results_queue)),
        "events": "ok" if trigger.events.alive else "the event subscription ended",
    }
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ok", "checks": checks})
    down = ", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
    body = error_body(503, "service_unavailable", f"unhealthy: {down}", checks=checks)
    return JSONResponse(body, status_code=503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    responses={200: {"description": "The metrics", "content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
