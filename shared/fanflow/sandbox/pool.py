"""A warm pool of sandbox zygotes: a fresh forked process per call, no interpreter start.

Each zygote (see `fanflow.sandbox.child._serve`) has imported what a call needs and serves one call
at a time; the pool holds up to `size` of them, started on demand, and calls beyond that
wait. A zygote that dies, is killed or stops answering is discarded and replaced by the
next call. One pool per process, owned by whoever owns the `ExecutionContext`; `close()`
ends every zygote (and with it every process inside).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from itertools import count
from typing import Any, Literal

from fanflow.errors import NodeError
from fanflow.sandbox import isolation, seccomp

log = logging.getLogger(__name__)

SandboxMode = Literal["namespaces", "unsafe-process"]
#: how long a zygote may take to start and say it is ready
_START_TIMEOUT_S = 10.0
#: past the call's own deadline, how long the zygote has to report before it is killed
_VERDICT_GRACE_S = 5.0
#: after the verdict, how long the pipes may take to close
_DRAIN_GRACE_S = 2.0
_STDERR_TAIL_BYTES = 16 * 1024
_names = count(1)


@dataclass
class CallOutcome:
    """What one call left: its result bytes, the end of its output, how it exited."""

    output: bytearray = field(default_factory=bytearray)
    stderr_tail: bytearray = field(default_factory=bytearray)
    returncode: int | None = None
    timed_out: bool = False
    output_overflow: bool = False


class SandboxPool:
    """Up to `size` zygotes; `call()` runs one request in a fresh child of one of them."""

    def __init__(
        self,
        *,
        size: int = 2,
        mode: SandboxMode = "namespaces",
        memory_mb: int = 512,
        max_processes: int = 64,
        tmp_mb: int = 64,
    ) -> None:
        if size < 1:
            raise ValueError("a sandbox pool needs a size of at least 1")
        self.size = size
        self.mode = mode
        self.memory_mb = memory_mb
        self.max_processes = max_processes
        self.tmp_mb = tmp_mb
        self._idle: list[_Zygote] = []
        self._all: set[_Zygote] = set()
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        if mode == "unsafe-process":
            log.warning(
                "FANFLOW_SANDBOX=unsafe-process: code nodes run WITHOUT isolation: user code "
                "keeps this worker's uid, filesystem and network (broker, database, files)"
            )

    async def call(self, request: bytes, *, timeout_s: float, max_output_bytes: int) -> CallOutcome:
        """Run one request; raises NodeError(SandboxError) when no zygote can start."""
        if self._closed:
            raise NodeError("the code sandbox is closed", error_type="SandboxError")
        self._bind_loop()
        assert self._slots is not None
        async with self._slots:
            zygote = await self._take()
            try:
                return await zygote.call(request, timeout_s, max_output_bytes)
            finally:
                if zygote.alive and not self._closed:
                    self._idle.append(zygote)
                else:
                    self._discard(zygote)

    async def _take(self) -> _Zygote:
        """An idle zygote that is still running (a dead one is replaced), or a new one."""
        while self._idle:
            zygote = self._idle.pop()
            if zygote.running():
                return zygote
            log.warning("a code sandbox zygote died while idle; starting a new one")
            self._discard(zygote)
        return await self._start()

    def zygote_pids(self) -> list[int]:
        """Host pids of the running zygotes' launchers (bwrap, or the zygote itself)."""
        return [zygote.process.pid for zygote in self._all if zygote.running()]

    def close(self) -> None:
        """End every zygote; every process inside dies with its namespace."""
        self._closed = True
        for zygote in list(self._all):
            self._discard(zygote)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # e.g. a new asyncio.run(): start afresh on this loop
            for zygote in list(self._all):
                self._discard(zygote)
            self._loop = loop
            self._slots = asyncio.Semaphore(self.size)

    async def _start(self) -> _Zygote:
        zygote = _Zygote(self)
        self._all.add(zygote)
        try:
            await zygote.start()
        except BaseException:
            self._discard(zygote)
            raise
        return zygote

    def _discard(self, zygote: _Zygote) -> None:
        self._all.discard(zygote)
        with contextlib.suppress(ValueError):
            self._idle.remove(zygote)
        zygote.kill()


class _Zygote:
    """One launched zygote and the socket to it."""

    def __init__(self, pool: SandboxPool) -> None:
        self.pool = pool
        self.alive = False
        self.process: subprocess.Popen[bytes]
        self._sock: socket.socket | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by kill()
        self._cgroups: isolation.Cgroups | None = None

    async def start(self) -> None:
        pool = self.pool
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        namespaced = pool.mode == "namespaces"
        config: dict[str, object] = {"fd": theirs.fileno()}
        preexec = None
        try:
            if namespaced:
                if os.geteuid() == 0:
                    config["uid"] = isolation.SANDBOX_UID
                config["seccomp"] = seccomp.filter_program().hex()
                command = isolation.bwrap_command(
                    json.dumps(config), _child_source(), tmp_mb=pool.tmp_mb
                )
                # the zygote and its tmpfs live within memory_mb + what the zygote needs
                self._cgroups = isolation.Cgroups(
                    f"fanflow-sandbox-{os.getpid()}-{next(_names)}",
                    memory_bytes=(pool.memory_mb + pool.tmp_mb + 64) * 1024 * 1024,
                    max_processes=pool.max_processes + 1,
                )
                preexec = self._cgroups.join if self._cgroups.dirs else None
                env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
            else:
                command = isolation.process_command(json.dumps(config), _child_source())
                env = isolation.environment(tempfile.gettempdir())
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                pass_fds=(theirs.fileno(),),
                env=env,
                cwd="/",
                preexec_fn=preexec,
                start_new_session=True,
            )
        except (OSError, isolation.SandboxUnavailable) as exc:
            ours.close()
            raise self._unavailable(str(exc)) from exc
        finally:
            theirs.close()
        self._sock = ours
        ours.setblocking(False)
        self.alive = True
        loop = asyncio.get_running_loop()
        try:
            ready = await asyncio.wait_for(loop.sock_recv(ours, 64), _START_TIMEOUT_S)
        except (TimeoutError, OSError):
            ready = b""
        if ready != b"ready":
            self.kill()
            raise self._unavailable(self._stderr_text() or "the zygote did not start")

    def running(self) -> bool:
        return self.alive and self.process.poll() is None

    def _unavailable(self, why: str) -> NodeError:
        if self.pool.mode == "namespaces":
            return NodeError(
                f"the code sandbox could not start its namespaces ({why.strip()}); code "
                "nodes need Linux user/PID/network/mount namespaces and bubblewrap "
                "(apt-get install bubblewrap). Set FANFLOW_SANDBOX=unsafe-process to run "
                "code without isolation (user code then reaches the broker and database)",
                error_type="SandboxError",
            )
        return NodeError(f"could not start the Python sandbox: {why}", error_type="SandboxError")

    def _stderr_text(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            return self._stderr.read()[-4000:].decode("utf-8", "replace")
        return ""

    async def call(self, request: bytes, timeout_s: float, max_output_bytes: int) -> CallOutcome:
        assert self._sock is not None
        outcome = CallOutcome()
        request_r, request_w = os.pipe()
        result_r, result_w = os.pipe()
        output_r, output_w = os.pipe()
        try:
            socket.send_fds(
                self._sock,
                [json.dumps({"timeout_s": timeout_s}).encode()],
                [request_r, result_w, output_w],
            )
        except OSError as exc:
            for fd in (request_r, request_w, result_r, result_w, output_r, output_w):
                os.close(fd)
            self.kill()
            raise NodeError(f"the code sandbox died: {exc}", error_type="SandboxError") from exc
        for fd in (request_r, result_w, output_w):
            os.close(fd)
        cap = max_output_bytes + 4096  # the envelope; the child enforces the exact cap
        readers = [
            asyncio.create_task(self._read(result_r, outcome, outcome.output, cap)),
            asyncio.create_task(self._read(output_r, outcome, outcome.stderr_tail, None)),
        ]
        writer = asyncio.create_task(_write_all(request_w, request))
        try:
            verdict = await self._verdict(timeout_s, outcome)
        except BaseException:
            self._interrupt()
            raise
        finally:
            writer.cancel()
            _, pending = await asyncio.wait(readers, timeout=_DRAIN_GRACE_S)
            for reader in pending:
                reader.cancel()
            await asyncio.gather(writer, *readers, return_exceptions=True)
        status = verdict.get("status")
        outcome.timed_out = bool(verdict.get("timed_out"))
        if isinstance(status, int):
            outcome.returncode = os.waitstatus_to_exitcode(status)
        return outcome

    async def _verdict(self, timeout_s: float, outcome: CallOutcome) -> dict[str, Any]:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        try:
            answer = await asyncio.wait_for(
                loop.sock_recv(self._sock, 4096), timeout_s + _VERDICT_GRACE_S
            )
        except (TimeoutError, OSError):
            answer = b""
        if not answer:  # killed from outside, or stuck: this zygote is done
            why = self._stderr_text().strip()[-1000:]
            self.kill()
            raise NodeError(
                "the code sandbox process died during the call (it is replaced)"
                + (f": {why}" if why else ""),
                error_type="SandboxError",
            )
        verdict: dict[str, Any] = json.loads(answer)
        return verdict

    def _interrupt(self) -> None:
        """The call was cancelled (or failed here): stop it, or give up on this zygote."""
        if self._sock is None:
            return
        try:
            self._sock.send(b"kill")
        except OSError:
            self.kill()
            return
        # the zygote answers once everything is dead; until then it cannot be reused
        self.kill() if not _wait_readable(self._sock, _DRAIN_GRACE_S) else self._drop_answer()

    def _drop_answer(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(OSError):
            if not self._sock.recv(4096):
                self.kill()

    async def _read(self, fd: int, outcome: CallOutcome, into: bytearray, cap: int | None) -> None:
        loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                into += chunk
                if cap is None:
                    del into[:-_STDERR_TAIL_BYTES]
                elif len(into) > cap:
                    outcome.output_overflow = True
                    self._interrupt_soon()
                    return
        finally:
            loop.remove_reader(fd)
            os.close(fd)

    def _interrupt_soon(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(b"kill")

    def kill(self) -> None:
        """End the zygote (and its namespace), close the socket, remove its cgroups."""
        self.alive = False
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        if self._cgroups is not None:
            self._cgroups.remove()
            self._cgroups = None
        self._stderr.close()


async def _write_all(fd: int, data: bytes) -> None:
    """Feed the request; the child may die before reading it all (its status says why)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    view = memoryview(data)
    writable = asyncio.Event()
    try:
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                loop.add_writer(fd, writable.set)
                try:
                    await writable.wait()
                finally:
                    loop.remove_writer(fd)
                    writable.clear()
            except (BrokenPipeError, ConnectionResetError):
                return
    finally:
        os.close(fd)


def _wait_readable(sock: socket.socket, timeout_s: float) -> bool:
    import select

    deadline = time.monotonic() + timeout_s
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(max(0.0, deadline - time.monotonic()) * 1000))


@functools.cache
def _child_source() -> str:
    """The zygote's program: `child.py` of this package."""
    return resources.files("fanflow.sandbox").joinpath("child.py").read_text(encoding="utf-8")
