"""Running a code node's untrusted Python in a child process with limits.

`run_python` starts a fresh interpreter per call (stdlib only, no site-packages) in its own
session, with a scrubbed environment and an empty temporary working directory. Before any
user code runs, the child sets its resource limits (address space, CPU, file size, no core
dumps), asks to die with its parent, makes itself non-dumpable, forbids privilege gains and
drops every capability. The request (code, inputs) goes in on stdin; the result comes back as
JSON on the child's original stdout, while the user's `print()` and fd 1 are redirected to
stderr, so printing cannot corrupt the result. On a wall-clock timeout, and after every run,
the whole process group is killed. The child's program is `fanflow.sandbox.child`.

This contains mistakes, it is not a security boundary like nsjail or gVisor. The code keeps
the worker's user id (as root it still owns root's files), its filesystem view and its
network; it can signal the worker's other processes; it can escape the group kill with
setsid(); nothing limits its process count or the number of files it writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
from importlib import resources
from typing import Any

from fanflow.errors import NodeError

DEFAULT_MAX_OUTPUT_BYTES = 8 * 1024 * 1024
#: no single file the code writes may grow past this (RLIMIT_FSIZE)
MAX_FILE_BYTES = 64 * 1024 * 1024
#: how much of the child's stderr (the user's prints) is kept to explain a crash
_STDERR_TAIL_BYTES = 16 * 1024
#: after the process group is killed, how long to wait for the pipes to close
_DRAIN_GRACE_S = 2.0
#: -P: no script dir or cwd on sys.path; -s/-S: no user or site packages (stdlib only);
#: -B: no .pyc files. Not -I: its -E would ignore PYTHONHASHSEED, and the environment is
#: ours entirely anyway.
_INTERPRETER_FLAGS = ("-P", "-s", "-S", "-B")


async def run_python(
    code: str,
    inputs: dict[str, Any],
    *,
    timeout_s: float = 60,
    memory_mb: int = 512,
    cpu_s: int | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
) -> Any:
    """Run `code`, which defines `main(**inputs) -> dict`, and return what `main` returned.

    Values cross as JSON: ints stay ints, floats floats (NaN and ±Infinity included).
    Raises `NodeError` with `error_type` ``CodeExecutionError`` (the code raised, did not
    compile, has no `main`, returned a non-dict or non-JSON value, or crashed),
    ``TimeoutError`` (wall clock `timeout_s` or CPU `cpu_s` exceeded), ``MemoryError``
    (address space over `memory_mb`) or ``SandboxError`` (the interpreter could not start).
    """
    request = _encode_request(code, inputs, memory_mb, cpu_s, max_output_bytes)
    workdir = tempfile.mkdtemp(prefix="fanflow-code-")
    try:
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *_INTERPRETER_FLAGS,
                "-c",
                _child_source(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir,
                env=_child_environment(workdir),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise NodeError(
                f"could not start the Python sandbox: {exc}", error_type="SandboxError"
            ) from exc
        run = _Run(process, max_output_bytes)
        try:
            await run.supervise(request, timeout_s)
        finally:
            await run.finish()
        return _interpret(run, timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s)
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)


def _encode_request(
    code: str, inputs: dict[str, Any], memory_mb: int, cpu_s: int | None, max_output_bytes: int
) -> bytes:
    for name, value in inputs.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise NodeError(
                f"input variable '{name}' cannot be passed to the code: {exc}",
                error_type="CodeExecutionError",
            ) from exc
    request = {
        "code": code,
        "inputs": inputs,
        "memory_bytes": memory_mb * 1024 * 1024,
        "memory_mb": memory_mb,
        "cpu_s": cpu_s,
        "file_bytes": MAX_FILE_BYTES,
        "max_output_bytes": max_output_bytes,
        "parent_pid": os.getpid(),
    }
    return json.dumps(request).encode()


def _child_environment(workdir: str) -> dict[str, str]:
    """Nothing inherited: no FANFLOW_*, *_API_KEY, AWS_* or proxies reach user code."""
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": workdir,
        "TMPDIR": workdir,
    }


class _Run:
    """One child process: feeds the request, drains both pipes (capped), kills the group."""

    def __init__(self, process: asyncio.subprocess.Process, max_output_bytes: int) -> None:
        self.process = process
        self.timed_out = False
        self.output_overflow = False
        self.output = bytearray()
        self.stderr_tail = bytearray()
        self.max_output_bytes = max_output_bytes
        # the envelope around the result adds a few bytes; the child enforces the exact cap
        self._output_cap = max_output_bytes + 4096
        # asyncio's wait() also waits for the pipes to close, which processes the code left
        # behind keep open; a pidfd says when the child itself exits. Opened before the
        # request is sent, so the child (blocked reading stdin) cannot have been reaped yet.
        try:
            self._pidfd: int | None = os.pidfd_open(process.pid)
        except (AttributeError, OSError):  # not Linux, or the child died at startup
            self._pidfd = None
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_output(process.stdout)),
            asyncio.create_task(self._read_stderr(process.stderr)),
        ]

    async def supervise(self, request: bytes, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._feed_and_wait(request), timeout_s)
        except TimeoutError:
            self.timed_out = True

    async def _feed_and_wait(self, request: bytes) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        # the child may die before reading everything; its exit status tells why
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(request)
            await stdin.drain()
        stdin.close()
        await self._exited()

    async def _exited(self) -> None:
        if self._pidfd is None:
            delay = 0.001
            while self.process.returncode is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
            return
        loop = asyncio.get_running_loop()
        exited = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(self._pidfd, readable)
        try:
            await exited
        finally:
            loop.remove_reader(self._pidfd)

    async def finish(self) -> None:
        """Kill whatever the code left running, reap the child, close the pipes."""
        self._kill_group()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), _DRAIN_GRACE_S)
        _, pending = await asyncio.wait(self._readers, timeout=_DRAIN_GRACE_S)
        for reader in pending:  # a process that left the session still holds the pipes
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    def _kill_group(self) -> None:
        # the child leads its own session, so its pid is the group id of it and its offspring
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    async def _read_output(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.output += chunk
            if len(self.output) > self._output_cap:
                self.output_overflow = True
                self._kill_group()
                return

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.stderr_tail += chunk
            del self.stderr_tail[:-_STDERR_TAIL_BYTES]


def _interpret(run: _Run, *, timeout_s: float, memory_mb: int, cpu_s: int | None) -> Any:
    if run.timed_out:
        raise NodeError(f"code timed out after {timeout_s:g} s", error_type="TimeoutError")
    if run.output_overflow:
        raise NodeError(
            f"the value returned by main() is larger than {_size(run.max_output_bytes)}",
            error_type="CodeExecutionError",
        )
    if run.output:
        try:
            envelope = json.loads(run.output)
        except ValueError:
            envelope = None
        if isinstance(envelope, dict) and envelope.get("ok") is True:
            return envelope.get("result")
        if isinstance(envelope, dict) and envelope.get("ok") is False:
            raise NodeError(str(envelope.get("message")), error_type=str(envelope.get("type")))
    raise _crash(run.process.returncode, bytes(run.stderr_tail), memory_mb, cpu_s)


def _crash(returncode: int | None, stderr: bytes, memory_mb: int, cpu_s: int | None) -> NodeError:
    """The child died without a verdict: say how, with the end of what it printed."""
    if returncode is not None and returncode < 0:
        number = -returncode
        if number == signal.SIGXCPU:
            return NodeError(
                f"code exceeded the CPU time limit of {cpu_s} s", error_type="TimeoutError"
            )
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        message = f"code was killed by {name}"
        if number in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT):
            message += f" (deep recursion, or the memory limit of {memory_mb} MB)"
    else:
        message = f"code exited with status {returncode} before main() returned"
    tail = stderr.decode("utf-8", "replace").strip()[-1000:]
    if tail:
        message += f"; its last output:\n{tail}"
    return NodeError(message, error_type="CodeExecutionError")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):g} MB" if n_bytes >= 1024 * 1024 else f"{n_bytes} bytes"


@functools.cache
def _child_source() -> str:
    """The program of the child interpreter: `child.py` of this package."""
    return resources.files("fanflow.sandbox").joinpath("child.py").read_text(encoding="utf-8")
