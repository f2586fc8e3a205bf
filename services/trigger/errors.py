"""Every 4xx/5xx answer in Dify's shape: `{"code", "message", "status"}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from fanflow.errors import FanflowError
from fanflow.store import is_transient

log = logging.getLogger("fanflow.trigger")

#: Dify's codes for the statuses that have no more specific one
_CODES = {
    400: "invalid_param",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_server_error",
    503: "service_unavailable",
}


#: the message of a 503 for a database that is away (never the driver's text)
UNAVAILABLE = "The service is temporarily unavailable. Please try again later."


class ApiError(FanflowError):
    """An answer to send instead of a result; `extra` fields join the body."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.code, self.message, **self.extra)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


class ErrorBody(BaseModel):
    """Every error answer: Dify's `{"code", "message", "status"}` (some add fields)."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str
    status: int


_MEANINGS = {
    400: "Invalid parameters or body (`invalid_param`); the message names the field",
    401: "Missing or wrong credentials",
    403: "Disabled (the admin API without FANFLOW_ADMIN_TOKEN)",
    404: "No such run for this app",
    413: "The body is too large",
    429: "The app has too many runs in progress",
    503: "The trigger is shutting down, or unhealthy",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error answers a route gives (for `APIRouter`)."""
    return {
        status: {"model": ErrorBody, "description": _MEANINGS.get(status, "Error")}
        for status in statuses
    }


def error_body(status: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, "status": status, **extra}


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def invalid_param(message: str) -> ApiError:
    return ApiError(400, "invalid_param", message)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Answer ApiError, HTTP errors, validation errors and crashes as Dify does."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(
            error_body(exc.status_code, code, message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Dify answers bad parameters with 400 invalid_param, not 422
        return invalid_param(_validation_message(exc)).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        if is_transient(exc):  # the database is away: worth a retry; the detail stays here
            return JSONResponse(
                error_body(503, "service_unavailable", UNAVAILABLE), status_code=503
            )
        return JSONResponse(
            error_body(500, "internal_server_error", "Internal Server Error."), status_code=500
        )
