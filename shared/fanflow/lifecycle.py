"""Process plumbing shared by the long-running services: signals, metrics endpoint, logging."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def configure_logging(name: str) -> None:
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO: a line per task on a busy worker
    logging.getLogger("httpx").setLevel(logging.WARNING)


def serve_metrics(port: int | None) -> None:
    """Expose /metrics on `port` (worker and aggregator; the trigger serves its own)."""
    if port:
        start_http_server(port)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` on a new event loop; SIGTERM or SIGINT sets `stop` (then it drains)."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    asyncio.run(runner())


async def every(interval_s: float, action: Callable[[], Awaitable[Any]]) -> None:
    """Run `action` every `interval_s` until cancelled; a failure is logged, not raised."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await action()
        except Exception as exc:
            name = getattr(action, "__name__", action)
            if _unavailable(exc):  # a database or broker away: one line, not a traceback
                log.warning("periodic %s failed: %s: %s", name, type(exc).__name__, exc)
            else:
                log.exception("periodic %s failed", name)


def _unavailable(exc: Exception) -> bool:
    from fanflow.mesh.transport import BrokerError
    from fanflow.store import is_transient

    return isinstance(exc, BrokerError) or is_transient(exc)
