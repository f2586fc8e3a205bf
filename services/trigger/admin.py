"""The admin API: register workflows as apps (`Authorization: Bearer <FANFLOW_ADMIN_TOKEN>`).

With no admin token configured the admin API is off: every call answers 403.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fanflow_services.trigger.bodies import parse_json_object, read_body
from fanflow_services.trigger.context import Trigger, get_trigger
from fanflow_services.trigger.errors import (
    ApiError,
    error_responses,
    invalid_param,
    unauthorized,
)
from fanflow_services.trigger.json_guard import text_error
from fastapi import APIRouter, Depends, Request

from fanflow.errors import WorkflowInvalid

router = APIRouter(prefix="/admin", tags=["Admin"], responses=error_responses(400, 401, 403, 413))
#: the longest app name the store keeps
MAX_APP_NAME = 255

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


async def _dsl_text(request: Request, max_bytes: int) -> str:
    raw = await read_body(request, max_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        dsl = parse_json_object(raw).get("dsl")
        if not isinstance(dsl, str) or not dsl.strip():
            raise invalid_param('dsl: expected {"dsl": "<the workflow YAML>"}')
        return dsl
    try:
        text: str = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_param(f"the workflow file is not UTF-8: {exc}") from None
    if not text.strip():
        raise invalid_param("the request body is empty: send the workflow YAML")
    bad_text = text_error(text, where="the workflow file")
    if bad_text is not None:
        raise invalid_param(bad_text)
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
    limits = trigger.settings.dsl_limits()
    text = await _dsl_text(request, limits.max_bytes)
    try:
        # parsing and validating a large file takes a while: in the helper process
        workflow = await trigger.imports.check(text, limits, label="the workflow file")
    except WorkflowInvalid as exc:
        raise ApiError(
            400, "invalid_param", str(exc), problems=[str(p) for p in exc.problems]
        ) from None
    name = workflow.name or "app"
    bad_name = text_error(name, where="app.name")
    if bad_name is not None:
        raise invalid_param(bad_name)
    if len(name) > MAX_APP_NAME:
        raise invalid_param(f"app.name: at most {MAX_APP_NAME} characters, got {len(name)}")
    app_id = await trigger.store.create_app(name, workflow.mode, text)
    api_key = await trigger.store.issue_api_key(app_id)
    return {"app_id": app_id, "api_key": api_key, "name": workflow.name, "mode": workflow.mode}
