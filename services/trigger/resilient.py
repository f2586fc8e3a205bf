"""The trigger's ride through a database blip: a run start retried on transient errors for
a few seconds, waits and streams that treat a failed read as "not yet", and the run read
once more at the end. Permanent errors are raised as they are; what the client sees of a
transient one that outlasts the budget is a generic 503 (`errors.py`), the detail is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from fanflow_services.trigger.context import Trigger

from fanflow.runtime import RunRequest
from fanflow.store import AppRecord, RunExists, RunRecord, is_transient, retry_transient

log = logging.getLogger("fanflow.trigger")
T = TypeVar("T")

#: the run id of a `POST /workflows/run`, sent with the headers, before the body: a client
#: whose connection dies during a blocking wait can still find its run
RUN_ID_HEADER = "X-Fanflow-Run-Id"
#: how long a run start retries a database that is away before answering 503
START_BUDGET_S = 5.0
#: how long the final read of a finished run may retry
FINAL_READ_BUDGET_S = 30.0


async def start_run(
    trigger: Trigger,
    app: AppRecord,
    run_id: str,
    request: RunRequest,
    *,
    max_running: int | None = None,
) -> Sequence[int]:
    """`driver.start_run`, retried on transient errors. A retry that finds the run exists
    means an earlier try committed (its answer was lost): its rows are published by an
    aggregator's outbox sweep, so nothing is returned to publish now."""
    tries = 0

    async def start() -> Sequence[int]:
        nonlocal tries
        tries += 1
        try:
            committed: Sequence[int] = await trigger.driver.start_run(
                app, run_id, request, max_running=max_running
            )
            return committed
        except RunExists:
            if tries == 1:
                raise
            log.info("run %s: committed by an earlier try; its messages go by the sweep", run_id)
            return []

    return await retry_transient(
        start, budget_s=START_BUDGET_S, what=f"starting run {run_id}", log=log
    )


async def patiently(action: Callable[[], Awaitable[T]], what: str) -> T:
    """A read a request needs before it can go on, retried like a run start."""
    return await retry_transient(action, budget_s=START_BUDGET_S, what=what, log=log)


async def peek_run(trigger: Trigger, run_id: str) -> RunRecord | None:
    """The run, or None when it cannot be read right now (a transient error, logged)."""
    try:
        run: RunRecord | None = await trigger.store.get_run(run_id)
        return run
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("run %s: database unavailable while waiting: %s", run_id, type(exc).__name__)
        return None


async def final_run(trigger: Trigger, run_id: str) -> RunRecord:
    """The run, read once it ended; transient errors retried for FINAL_READ_BUDGET_S."""

    async def read() -> RunRecord:
        run: RunRecord | None = await trigger.store.get_run(run_id)
        if run is None:  # created by this process; runs are never deleted
            raise LookupError(f"run {run_id} vanished")
        return run

    return await retry_transient(
        read, budget_s=FINAL_READ_BUDGET_S, what=f"reading run {run_id}", log=log
    )
