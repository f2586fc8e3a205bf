"""Database failures, transient or permanent, and the one backoff every retry uses.

Transient: the database went away or is not accepting work yet (connection refused, reset
or invalidated, restarting, shutting down, out of connections, a serialization failure or
deadlock, SQLite's "database is locked", a pool timeout). The same call can succeed later,
so callers wait and retry, without counting it against the message. Anything else
(constraint violations, bad SQL, undecodable data) fails the same way every time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from sqlalchemy import exc as sa_exc

T = TypeVar("T")

#: SQLSTATEs a retry can cure: 08 connection exception, 53 insufficient resources,
#: 57P01-57P05 shutdown/restart/crash recovery, 58 system error (I/O), 40001
#: serialization failure, 40P01 deadlock, 55P03 lock not available
_TRANSIENT_SQLSTATES = ("08", "53", "57P", "58", "40001", "40P01", "55P03")
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "disk i/o error")
#: asyncpg's InterfaceError for a connection that died under its user (no SQLSTATE)
_CLOSED_CONNECTION = ("connection is closed", "connection was closed")
#: how deep to follow __cause__/__context__ looking for the driver's error
_CHAIN_LIMIT = 8


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < _CHAIN_LIMIT:
        yield current
        seen += 1
        current = current.__cause__ or current.__context__


def is_transient(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) says the database is away or busy right now."""
    for error in _chain(exc):
        if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, sa_exc.TimeoutError | ConnectionError | TimeoutError):
            return True  # pool timeout, refused/reset connections, connect timeouts
        if isinstance(error, OSError) and not isinstance(
            error, FileNotFoundError | PermissionError
        ):
            return True  # e.g. "Connect call failed", no route to host
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATES):
            return True
        if type(error).__name__ == "InterfaceError" and any(
            text in str(error).lower() for text in _CLOSED_CONNECTION
        ):
            return True
        if type(error).__name__ == "OperationalError" and any(
            text in str(error).lower() for text in _SQLITE_TRANSIENT
        ):
            return True
    return False


class Backoff:
    """Jittered exponential delays: each in [d/2, d], d doubling from `initial_s` up to
    `cap_s`; `reset()` after a success."""

    def __init__(self, *, initial_s: float = 0.1, cap_s: float = 2.0) -> None:
        if initial_s <= 0 or cap_s < initial_s:
            raise ValueError(f"need 0 < initial_s <= cap_s, got {initial_s}, {cap_s}")
        self.initial_s = initial_s
        self.cap_s = cap_s
        self._next = initial_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.cap_s, self._next * 2)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._next = self.initial_s

    async def sleep(self) -> float:
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay


async def retry_transient(
    action: Callable[[], Awaitable[T]],
    *,
    budget_s: float,
    what: str,
    log: logging.Logger,
    backoff: Backoff | None = None,
) -> T:
    """`await action()`, retried on transient database errors for up to `budget_s`
    seconds; the last error is raised once the budget is spent (or a permanent one at
    once)."""
    backoff = backoff or Backoff()
    deadline = time.monotonic() + budget_s
    while True:
        try:
            return await action()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() >= deadline:
                raise
            delay = backoff.next_delay()
            log.warning(
                "%s: database unavailable (%s), retrying in %.2f s", what, _brief(exc), delay
            )
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))


def _brief(exc: BaseException) -> str:
    """The innermost error's type and first line, for one-line logs."""
    innermost = list(_chain(exc))[-1]
    text = str(innermost).splitlines()[0] if str(innermost) else ""
    return f"{type(innermost).__name__}: {text}"[:200]
