"""The embedded runner: one process, an in-memory transport, no broker.

The same scheduler as the mesh; tasks run on this process's event loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from fanflow.executors import ExecutionContext, execute_with_timeout
from fanflow.http_pool import HttpPool
from fanflow.kernel import MemoryItems, settle_items, start_run
from fanflow.messages import NodeTask
from fanflow.runtime import RunRequest, prepare_run
from fanflow.scheduler import (
    CancelTask,
    CancelTasks,
    Command,
    DispatchTask,
    Emit,
    Event,
    Limits,
    RunFinished,
    Scheduler,
    StartTimer,
    StopRequested,
    TaskFinished,
    TimerFired,
)
from fanflow.workflow import Workflow

EventCallback = Callable[[Emit], None]


@dataclass
class RunResult:
    """A finished run, shaped like the `data` of Dify's blocking workflow response."""

    id: str
    workflow_id: str
    status: str
    outputs: dict[str, Any]
    error: str | None
    elapsed_time: float
    total_tokens: int
    total_steps: int
    created_at: int
    finished_at: int
    exceptions_count: int = 0
    #: a chatflow's conversation variables as the run left them (not part of `as_dict`)
    conversation: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "conversation"}


def _forget(by_id: dict[str, asyncio.Task[None]], task_id: str, _: object) -> None:
    by_id.pop(task_id, None)


class EmbeddedRunner:
    """Runs workflows in this process. One instance may run many workflows in turn."""

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        context: ExecutionContext | None = None,
        on_event: EventCallback | None = None,
        http_pool: Callable[[], HttpPool] = HttpPool,
    ) -> None:
        """`http_pool` builds the pool of a run whose `context` has none (the run closes
        it at its end); a context's own pool belongs to the caller."""
        self.limits = limits or Limits()
        self.context = context or ExecutionContext()
        self.on_event = on_event
        self.http_pool = http_pool

    def run(self, workflow: Workflow, request: RunRequest) -> RunResult:
        return asyncio.run(self.async_run(workflow, request))

    async def async_run(
        self, workflow: Workflow, request: RunRequest, *, stop: asyncio.Event | None = None
    ) -> RunResult:
        """Run to the end. Raises `InputsInvalid` before anything runs when inputs are bad."""
        context, own_sandbox = self._context_with_sandbox()
        try:
            if context.http_pool is not None:
                return await self._run(workflow, request, context, stop)
            async with self.http_pool() as pool:
                return await self._run(workflow, request, replace(context, http_pool=pool), stop)
        finally:
            if own_sandbox is not None:
                own_sandbox.close()

    def _context_with_sandbox(self) -> tuple[ExecutionContext, Any]:
        """The context; with a code sandbox of this run's own when the caller gave none."""
        if self.context.code_sandbox is not None:
            return self.context, None
        from fanflow.sandbox.pool import SandboxPool

        sandbox = SandboxPool(memory_mb=self.context.code_memory_mb)
        return replace(self.context, code_sandbox=sandbox), sandbox

    async def _run(
        self,
        workflow: Workflow,
        request: RunRequest,
        context: ExecutionContext,
        stop: asyncio.Event | None,
    ) -> RunResult:
        run_id = str(uuid.uuid4())
        created = time.time()
        setup = prepare_run(workflow, request, run_id=run_id, now_s=created)
        scheduler = Scheduler(workflow, limits=self.limits)
        events: asyncio.Queue[Event] = asyncio.Queue()
        items = MemoryItems()
        tasks: set[asyncio.Task[None]] = set()
        by_id: dict[str, asyncio.Task[None]] = {}
        timers: list[asyncio.TimerHandle] = []
        loop = asyncio.get_running_loop()
        finished: RunFinished | None = None

        async def run_task(task: NodeTask, delay_ms: int) -> None:
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            result = await execute_with_timeout(task, context, timeout_s=self.limits.task_timeout_s)
            events.put_nowait(TaskFinished(result))

        async def carry_out(commands: list[Command]) -> None:
            nonlocal finished
            for command in await settle_items(scheduler, state, commands, items):
                if isinstance(command, DispatchTask):
                    handle = asyncio.create_task(run_task(command.task, command.delay_ms))
                    tasks.add(handle)
                    handle.add_done_callback(tasks.discard)
                    by_id[command.task.task_id] = handle
                    handle.add_done_callback(partial(_forget, by_id, command.task.task_id))
                elif isinstance(command, StartTimer):
                    timers.append(
                        loop.call_later(
                            command.delay_ms / 1000, events.put_nowait, TimerFired(command.name)
                        )
                    )
                elif isinstance(command, CancelTasks):
                    for handle in tasks:
                        handle.cancel()
                elif isinstance(command, CancelTask):  # a lost race's branches
                    for task_id in command.task_ids:
                        if (lost := by_id.get(task_id)) is not None:
                            lost.cancel()
                elif isinstance(command, Emit):
                    if self.on_event is not None:
                        self.on_event(command)
                elif isinstance(command, RunFinished):
                    finished = command

        stop_waiter = asyncio.create_task(stop.wait()) if stop is not None else None
        if stop_waiter is not None:
            stop_waiter.add_done_callback(lambda _: events.put_nowait(StopRequested()))
        try:
            state, commands = start_run(scheduler, run_id, setup)
            await carry_out(commands)
            while finished is None:
                event = await events.get()
                await carry_out(scheduler.advance(state, event))
        finally:
            for timer in timers:
                timer.cancel()
            for handle in list(tasks):
                handle.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if stop_waiter is not None:
                stop_waiter.cancel()
        ended = time.time()
        return RunResult(
            id=run_id,
            workflow_id=setup.system["workflow_id"],
            status=finished.status,
            outputs=finished.outputs,
            error=finished.error,
            elapsed_time=round(ended - created, 6),
            total_tokens=state.total_tokens,
            total_steps=state.steps,
            created_at=int(created),
            finished_at=int(ended),
            exceptions_count=state.exceptions_count,
            conversation=dict(state.conversation),
        )
