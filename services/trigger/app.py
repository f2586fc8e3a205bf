"""`create_app(settings)`: the trigger's FastAPI application (Service API, admin, ops)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fanflow_services.trigger import (
    admin,
    api,
    app_info,
    batches,
    chat,
    conversations,
    ops,
    redrive,
)
from fanflow_services.trigger.bodies import MAX_REQUEST_BYTES
from fanflow_services.trigger.context import open_trigger
from fanflow_services.trigger.errors import install_error_handlers
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fanflow.metrics import HTTP_REQUESTS
from fanflow.settings import Settings


class _RequestMetrics:
    """Counts requests by route template (never by raw path: ids would explode the labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(route, scope["method"], str(status)).inc()


def create_app(settings: Settings, *, max_request_bytes: int = MAX_REQUEST_BYTES) -> FastAPI:
    """The trigger app. Its lifespan opens the store and the broker, declares the topology
    and starts the process's one event subscription; `app.state.trigger` holds them."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_trigger(settings, max_request_bytes=max_request_bytes) as trigger:
            app.state.trigger = trigger
            yield

    app = FastAPI(
        title="fanflow trigger",
        summary="Dify's Service API for workflow apps, run across RabbitMQ workers.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(redrive.router)
    app.include_router(batches.router)
    app.include_router(chat.router)
    app.include_router(conversations.router)
    app.include_router(app_info.router)
    app.include_router(admin.router)
    app.include_router(ops.router)
    app.add_middleware(_RequestMetrics)
    return app
