"""Run events for blocking calls and SSE streams: ONE event subscription per trigger.

`RunEvents` owns the process's single `EventSubscription` and a dict run_id → watches.
A request binds its run's events *before* starting the run (`await hub.watch(run_id)`),
so nothing the first step publishes is missed. The pump task hands every event to the
run's watches: a blocking call waits on a future resolved by `workflow_finished`, a stream
reads a queue. After `workflow_finished` the run is unbound and forgotten, so a watch whose
owner vanished (a stream never iterated) cannot outlive its run.

Events are not persistent: one published while the subscription reconnects is lost. Waiters
therefore re-read the run from the store when they have heard nothing for a while
(`RECHECK_S`); that is a safety net, not the way results arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from fanflow.mesh.amqp import BrokerError, Event, EventSubscription

log = logging.getLogger("fanflow.trigger")

FINISHED_EVENT = "workflow_finished"
#: how long a waiter goes without any event before it re-reads the run from the store
RECHECK_S = 10.0


#: events a stream may hold for a slow client before dropping progress events
STREAM_BUFFER = 10_000


class Shutdown:
    """Put in a stream's queue when the trigger stops: end the stream now."""


SHUTDOWN = Shutdown()


class RunWatch:
    """One waiter on one run. Streams read `next()`; blocking calls `wait_finished()`."""

    def __init__(self, hub: RunEvents, run_id: str, *, stream: bool) -> None:
        self.run_id = run_id
        self._hub = hub
        # a blocking call keeps no queue: a long iteration's events would only pile up
        self._queue: asyncio.Queue[Event | Shutdown] | None = asyncio.Queue() if stream else None
        self._finished: asyncio.Future[Event | None] = asyncio.get_running_loop().create_future()
        #: progress events not queued for a slow stream reader
        self.dropped = 0

    def deliver(self, event: Event) -> None:
        if self._queue is not None:
            if self._queue.qsize() < STREAM_BUFFER or event.name == FINISHED_EVENT:
                self._queue.put_nowait(event)
            else:
                # a client reading slower than the run progresses: its progress events are
                # dropped, never the end of the run (and trigger memory stays bounded)
                self.dropped += 1
        if event.name == FINISHED_EVENT and not self._finished.done():
            self._finished.set_result(event)

    def shut_down(self) -> None:
        if self._queue is not None:
            self._queue.put_nowait(SHUTDOWN)
        if not self._finished.done():
            self._finished.set_result(None)

    async def next(self, timeout_s: float) -> Event | Shutdown | None:
        """The next event, SHUTDOWN when the trigger stops, None after `timeout_s` of quiet."""
        if self._queue is None:
            raise RuntimeError("next() is for streaming watches")
        try:
            return await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None

    async def wait_finished(self, timeout_s: float) -> Event | None:
        """The run's `workflow_finished` event; None on timeout or trigger shutdown."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._finished), timeout_s)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Stop watching (idempotent; the binding goes with the run's last watch)."""
        self._hub.discard(self)


@dataclass
class _Run:
    bound: asyncio.Future[None]
    watches: set[RunWatch] = field(default_factory=set)


class RunEvents:
    """Fans the one event subscription out to the runs' watches."""

    def __init__(self, subscription: EventSubscription) -> None:
        self._subscription = subscription
        self._runs: dict[str, _Run] = {}
        self._pump: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.shutting_down = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pump = asyncio.create_task(self._run_pump(), name="trigger-events")

    @property
    def alive(self) -> bool:
        return self._pump is not None and not self._pump.done()

    @property
    def watched_runs(self) -> int:
        return len(self._runs)

    async def watch(self, run_id: str, *, stream: bool) -> RunWatch:
        """Watch a run's events; returns once the broker binding is in place."""
        run = self._runs.get(run_id)
        if run is None:
            bound = asyncio.ensure_future(self._subscription.bind(run_id))
            run = self._runs[run_id] = _Run(bound)
        watch = RunWatch(self, run_id, stream=stream)
        run.watches.add(watch)
        if self.shutting_down:
            watch.shut_down()
        try:
            await asyncio.shield(run.bound)
        except BaseException:
            watch.close()
            raise
        return watch

    def discard(self, watch: RunWatch) -> None:
        run = self._runs.get(watch.run_id)
        if run is None or watch not in run.watches:
            return
        run.watches.discard(watch)
        if not run.watches:
            self._forget(watch.run_id)

    def begin_shutdown(self) -> None:
        """End every stream and blocking wait now (from any thread, e.g. a signal handler)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._shut_down)

    def _shut_down(self) -> None:
        self.shutting_down = True
        for run in self._runs.values():
            for watch in run.watches:
                watch.shut_down()

    async def close(self) -> None:
        self._shut_down()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        await self._subscription.close()
        for task in list(self._background):
            task.cancel()

    async def _run_pump(self) -> None:
        async for event in self._subscription:
            run = self._runs.get(event.run_id)
            if run is None:
                continue  # a late or duplicated event of a run nobody waits for any more
            for watch in list(run.watches):
                watch.deliver(event)
            if event.name == FINISHED_EVENT:
                self._forget(event.run_id)
        log.warning("the event subscription ended; blocking calls and streams will time out")

    def _forget(self, run_id: str) -> None:
        run = self._runs.pop(run_id, None)
        if run is None or self.shutting_down:
            return
        task = asyncio.ensure_future(self._unbind(run_id, run.bound))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _unbind(self, run_id: str, bound: asyncio.Future[None]) -> None:
        try:
            await bound
            if run_id not in self._runs:  # nobody started watching it again meanwhile
                await self._subscription.unbind(run_id)
        except (BrokerError, RuntimeError) as exc:
            log.warning("could not unbind the events of run %s: %r", run_id, exc)
