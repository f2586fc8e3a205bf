"""Health that means "doing the work": a heartbeat file a service writes while its checks pass.

A long-running service (worker, aggregator) runs `Heartbeat.async_run`, which evaluates its
checks every `interval_s` — the broker connection and consumers are up, the database answers
— and rewrites the heartbeat file with the outcome. `fanflow health FILE` (the compose
healthcheck) reads it: healthy only when the file is fresh and every check passed. A process
whose event loop is stuck, whose broker connection died or whose consumers stopped goes
unhealthy within `max_age_s`, although it still answers on its metrics port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: a check answers None when fine, else what is wrong
Check = Callable[[], Awaitable[str | None]]

DEFAULT_INTERVAL_S = 5.0
#: a heartbeat older than this is a dead or stuck process
DEFAULT_MAX_AGE_S = 30.0
CHECK_TIMEOUT_S = 5.0


class Heartbeat:
    """Evaluates named checks periodically and writes the outcome to `path` atomically."""

    def __init__(
        self, component: str, path: Path, *, interval_s: float = DEFAULT_INTERVAL_S
    ) -> None:
        self.component = component
        self.path = Path(path)
        self.interval_s = interval_s
        self._checks: dict[str, Check] = {}

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    async def beat(self) -> dict[str, str | None]:
        """Run every check once, write the file; returns check name -> problem (None: ok)."""
        problems: dict[str, str | None] = {}
        for name, check in self._checks.items():
            try:
                problems[name] = await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
            except TimeoutError:
                problems[name] = f"no answer within {CHECK_TIMEOUT_S:g} s"
            except Exception as exc:
                problems[name] = f"{type(exc).__name__}: {exc}"
        record = {
            "component": self.component,
            "pid": os.getpid(),
            "at": time.time(),
            "ok": all(problem is None for problem in problems.values()),
            "checks": problems,
        }
        self._write(record)
        return problems

    async def async_run(self) -> None:
        """Beat until cancelled; the file is removed on the way out (a stopped process is
        not healthy)."""
        try:
            while True:
                problems = await self.beat()
                failing = {k: v for k, v in problems.items() if v is not None}
                if failing:
                    log.warning("%s unhealthy: %s", self.component, failing)
                await asyncio.sleep(self.interval_s)
        finally:
            self.path.unlink(missing_ok=True)

    def _write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(record), encoding="utf-8")
        os.replace(partial, self.path)


@dataclass(frozen=True)
class HealthReport:
    healthy: bool
    message: str


def read_heartbeat(path: Path, *, max_age_s: float = DEFAULT_MAX_AGE_S) -> HealthReport:
    """Whether the heartbeat at `path` says healthy, and why not."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return HealthReport(False, f"no heartbeat at {path}: the service is not running")
    except (OSError, ValueError) as exc:
        return HealthReport(False, f"unreadable heartbeat at {path}: {exc}")
    if not isinstance(record, dict):
        return HealthReport(False, f"unreadable heartbeat at {path}: not a JSON object")
    component = record.get("component", "service")
    at = record.get("at")
    if not isinstance(at, int | float):
        return HealthReport(False, f"unreadable heartbeat at {path}: no time of its beat")
    age_s = time.time() - float(at)
    if age_s > max_age_s:
        return HealthReport(
            False, f"{component}: last heartbeat {age_s:.0f} s ago (limit {max_age_s:g} s)"
        )
    failing = {k: v for k, v in (record.get("checks") or {}).items() if v is not None}
    if failing or not record.get("ok"):
        detail = "; ".join(f"{k}: {v}" for k, v in failing.items()) or "not ok"
        return HealthReport(False, f"{component}: {detail}")
    return HealthReport(True, f"{component}: healthy ({age_s:.1f} s ago)")


def start_heartbeat(
    component: str, path: Path | None, checks: dict[str, Check]
) -> asyncio.Task[None] | None:
    """Run a heartbeat of `checks` at `path` in the background (None: no path configured);
    cancel the task to stop it, which removes the file."""
    if path is None:
        return None
    heartbeat = Heartbeat(component, path)
    for name, check in checks.items():
        heartbeat.add_check(name, check)
    return asyncio.create_task(heartbeat.async_run(), name=f"heartbeat:{component}")
