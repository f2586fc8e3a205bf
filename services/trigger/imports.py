"""Workflow imports parsed and validated in a separate process, never on the event loop.

A thread is not enough: parsing YAML is Python code holding the GIL, and a file within
every limit still took seconds, during which `/healthz` waited up to a second for the GIL.
One long-lived helper process (started from a forkserver that has the DSL loader imported,
so each start is cheap) parses a file and answers with its name and mode or its problems;
the trigger's loop only awaits the answer.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from fanflow.dsl.limits import DslLimits
from fanflow.errors import Problem, WorkflowInvalid

__all__ = ["ImportChecked", "ImportChecker"]

#: the helper yields the CPU to the trigger: serving requests comes before an import
_NICE = 10
#: how often the helper checks that the trigger is still alive
_WATCH_S = 1.0
#: what the helper process imports before forking (the loader and everything it uses)
_PRELOAD = ["fanflow.dsl.load"]


@dataclass(frozen=True)
class ImportChecked:
    """What the trigger needs of a valid workflow file."""

    name: str
    mode: str


@dataclass(frozen=True)
class _Refused:
    problems: tuple[str, ...]


def _init_helper(trigger_pid: int) -> None:
    os.nice(_NICE)

    # the helper is the forkserver's child: if the trigger is killed outright (no
    # shutdown), nothing tells the helper, so it watches the trigger and leaves with it
    def watch() -> None:
        while True:
            time.sleep(_WATCH_S)
            try:
                os.kill(trigger_pid, 0)
            except ProcessLookupError:
                os._exit(0)

    threading.Thread(target=watch, name="fanflow-import-watch", daemon=True).start()


def _check(label: str, text: str, limits: DslLimits) -> ImportChecked | _Refused:
    # runs in the helper process; plain values cross the pipe, not exceptions
    from fanflow.dsl.load import load_workflow

    try:
        workflow = load_workflow(label, text=text, limits=limits)
    except WorkflowInvalid as exc:
        return _Refused(tuple(str(p) for p in exc.problems))
    return ImportChecked(name=workflow.name, mode=workflow.mode)


class ImportChecker:
    """`await checker.check(text, limits, label=...)`: the file's name and mode, or
    `WorkflowInvalid` with the loader's problems (as text). `close()` stops the helper."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context(
                "forkserver" if "forkserver" in methods else "spawn"
            )
            if "forkserver" in methods:
                context.set_forkserver_preload(_PRELOAD)
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=context, initializer=_init_helper, initargs=(os.getpid(),)
            )
        return self._pool

    async def check(self, text: str, limits: DslLimits, *, label: str) -> ImportChecked:
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(self._executor(), _check, label, text, limits)
        except BrokenProcessPool:
            self._pool = None  # the next import starts a fresh helper
            died = "the parser process died reading the file (out of memory?)"
            raise WorkflowInvalid([Problem(died)], source=label) from None
        if isinstance(answer, _Refused):
            raise WorkflowInvalid([Problem(p) for p in answer.problems], source=label)
        return answer

    def start(self) -> None:
        """Start the helper now, so the first import does not wait for it."""
        self._executor().submit(int)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
