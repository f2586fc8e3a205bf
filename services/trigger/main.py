"""`fanflow trigger`: serve the app with uvicorn; SIGTERM/SIGINT shut down gracefully.

On the signal, open SSE streams get an `error` event naming the run to poll and close,
blocking calls answer with the run as stored, then uvicorn drains the remaining requests
(up to the drain timeout) and the lifespan closes broker and store. Runs go on in the mesh.
"""

from __future__ import annotations

import sys
from types import FrameType

import uvicorn
from fanflow_services.trigger.app import create_app
from fastapi import FastAPI

from fanflow.lifecycle import configure_logging
from fanflow.settings import Settings

#: uvicorn's exit status when the app failed to start (e.g. the broker is unreachable)
EXIT_STARTUP_FAILED = 3


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        trigger = getattr(self._app.state, "trigger", None)
        if trigger is not None:
            trigger.events.begin_shutdown()
        super().handle_exit(sig, frame)


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Run the trigger until SIGTERM or SIGINT."""
    configure_logging("trigger")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        proxy_headers=True,
    )
    server = _Server(config, app)
    server.run()
    if not server.started:
        sys.exit(EXIT_STARTUP_FAILED)
