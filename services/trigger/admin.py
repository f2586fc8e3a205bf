"""The admin API: register workflows as apps (`Authorization: Bearer <FANFLOW_ADMIN_TOKEN>`).

With no admin token configured the admin API is off: every call answers 403.
"""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any

from fanflow_services.trigger.bodies import MAX_DSL_BYTES, read_body
from fanflow_services.trigger.context import Trigger, get_trigger
from fanflow_services.trigger.errors import ApiError, invalid_param, unauthorized
from fastapi import APIRouter, Depends, Request

from fanflow.dsl.load import load_workflow
from fanflow.errors import WorkflowInvalid

router = APIRouter(prefix="/admin", tags=["Admin"])

TriggerDep = Annotated[Trigger, Depends(get_trigger)]


def require_admin(request: Request, trigger: TriggerDep) -> None:
    expected = trigger.settings.admin_token
    if not expected:
        raise ApiError(
            403,
            "forbidden",
            "the admin API is disabled: set FANFLOW_ADMIN_TOKEN on the trigger to enable it",
        )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise unauthorized("admin token missing or wrong: send 'Authorization: Bearer <token>'")


async def _dsl_text(request: Request) -> str:
    raw = await read_body(request, MAX_DSL_BYTES)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise invalid_param(f"the request body is not valid JSON: {exc}") from None
        dsl = payload.get("dsl") if isinstance(payload, dict) else None
        if not isinstance(dsl, str) or not dsl.strip():
            raise invalid_param('dsl: expected {"dsl": "<the workflow YAML>"}')
        return dsl
    try:
        text: str = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_param(f"the workflow file is not UTF-8: {exc}") from None
    if not text.strip():
        raise invalid_param("the request body is empty: send the workflow YAML")
    return text


@router.post(
    "/apps",
    status_code=201,
    dependencies=[Depends(require_admin)],
    summary="Import a workflow as an app",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/yaml": {"schema": {"type": "string"}},
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["dsl"],
                        "properties": {"dsl": {"type": "string"}},
                    }
                },
            },
        }
    },
)
async def import_app(request: Request, trigger: TriggerDep) -> dict[str, Any]:
    """Body: the Dify DSL as YAML (`text/yaml`) or `{"dsl": "..."}` (`application/json`).

    Validates it (400 listing every problem), registers it and issues an API key, returned
    once: `{"app_id", "api_key"}`.
    """
    text = await _dsl_text(request)
    try:
        workflow = load_workflow("the workflow file", text=text)
    except WorkflowInvalid as exc:
        raise ApiError(
            400, "invalid_param", str(exc), problems=[str(p) for p in exc.problems]
        ) from None
    app_id = await trigger.store.create_app(workflow.name or "app", workflow.mode, text)
    api_key = await trigger.store.issue_api_key(app_id)
    return {"app_id": app_id, "api_key": api_key, "name": workflow.name, "mode": workflow.mode}
