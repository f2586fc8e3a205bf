"""Running a code node's untrusted Python in a child process with limits.

`run_python` starts a fresh interpreter per call (stdlib only, no site-packages) in its own
session, with a scrubbed environment and an empty temporary working directory. Before any
user code runs, the child sets its resource limits (address space, CPU, file size, no core
dumps), asks to die with its parent, makes itself non-dumpable, forbids privilege gains and
drops every capability. The request (code, inputs) goes in on stdin; the result comes back as
JSON on the child's original stdout, while the user's `print()` and fd 1 are redirected to
stderr, so printing cannot corrupt the result. On a wall-clock timeout, and after every run,
the whole process group is killed.

This contains mistakes, it is not a security boundary like nsjail or gVisor. The code keeps
the worker's user id (as root it still owns root's files), its filesystem view and its
network; it can signal the worker's other processes; it can escape the group kill with
setsid(); nothing limits its process count or the number of files it writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import os
import shutil
import signal
import sys
import tempfile
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
    return inspect.getsource(_child_main) + "\n_child_main()\n"


def _child_main() -> None:  # pragma: no cover - runs in the sandboxed interpreter
    """Entry point of the child interpreter. Its source is sent with `-c`, so it must stay
    self-contained: stdlib imports inside, no module globals, no annotations needing imports.
    """
    import contextlib
    import json
    import os
    import resource
    import sys

    result_fd = os.dup(1)  # the result channel; user prints and fd 1 now go to stderr
    os.dup2(2, 1)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # kept on a crash
    request = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    my_pid = os.getpid()

    def limit(which: int, soft: int, hard_extra: int = 0) -> None:
        """Lower soft and hard limit (never raise them); the hard one binds user code too."""
        _, current = resource.getrlimit(which)
        hard = soft + hard_extra
        if current != resource.RLIM_INFINITY:
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(which, (soft, hard))

    limit(resource.RLIMIT_AS, request["memory_bytes"])
    limit(resource.RLIMIT_FSIZE, request["file_bytes"])
    limit(resource.RLIMIT_CORE, 0)
    if request["cpu_s"]:
        limit(resource.RLIMIT_CPU, request["cpu_s"], hard_extra=1)  # soft: SIGXCPU

    try:  # Linux only; where a call fails the limits above still hold
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
        prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG: SIGKILL when the worker dies
        if os.getppid() != request["parent_pid"]:
            os._exit(70)  # the worker died before the line above
        prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: other same-uid processes can't ptrace us
        prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid binaries grant nothing
        for capability in range(64):  # PR_CAPBSET_DROP: exec'd programs get no caps either
            prctl(24, capability, 0, 0, 0)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, self
        libc.capset(header, (ctypes.c_uint32 * 6)())  # no effective/permitted/inheritable
    except (OSError, AttributeError):
        pass

    code = request["code"]
    lines = code.splitlines()
    memory_mb = request["memory_mb"]

    def finish(data: bytes) -> None:
        if os.getpid() != my_pid:  # a fork of the user's that returned: not our answer
            os._exit(0)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        view = memoryview(data)
        while view:
            view = view[os.write(result_fd, view) :]
        os._exit(0)  # skip interpreter shutdown: user threads and atexit hooks can't hang it

    def fail(kind: str, message: str) -> None:
        finish(json.dumps({"ok": False, "type": kind, "message": message}).encode())

    def user_frames(exc: BaseException, keep: int = 8) -> tuple[list, int]:
        """The last `keep` (line, function) of the user's frames, and how many there were.

        Walks the traceback by hand and then drops it: after a MemoryError or a deep
        recursion, formatting the whole traceback could fail or take seconds.
        """
        frames: list = []
        total = 0
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<code>":
                total += 1
                frames.append((tb.tb_lineno, tb.tb_frame.f_code.co_name))
                if len(frames) > keep:
                    del frames[0]
            tb = tb.tb_next
        exc.__traceback__ = None
        return frames, total

    def source_line(number: int | None) -> str:
        if number is None or not 0 < number <= len(lines):
            return ""
        text = lines[number - 1].strip()
        return text if len(text) <= 160 else text[:157] + "..."

    def explain(exc: BaseException) -> str:
        frames, total = user_frames(exc)
        try:
            text = str(exc)
        except Exception:
            text = ""
        summary = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        if frames:
            summary += f" (line {frames[-1][0]}, in {frames[-1][1]})"
        report = [summary]
        if isinstance(exc, ModuleNotFoundError):
            report.append("The code node can import Python's standard library only.")
        if frames:
            report.append("Traceback (your code):")
            if total > len(frames):
                report.append(f"  ... {total - len(frames)} earlier frames")
            shown: list = []  # [frame, times]: a recursion shows once
            for frame in frames:
                if shown and shown[-1][0] == frame:
                    shown[-1][1] += 1
                else:
                    shown.append([frame, 1])
            for (n, name), times in shown:
                again = f" (x{times})" if times > 1 else ""
                report.append(f"  line {n}, in {name}{again}: {source_line(n)}")
        return "\n".join(report)

    def out_of_memory(exc: BaseException) -> None:
        frames, _ = user_frames(exc)
        where = f" (line {frames[-1][0]}, in {frames[-1][1]})" if frames else ""
        fail("MemoryError", f"code exceeded the memory limit of {memory_mb} MB{where}")

    def size(n_bytes: int) -> str:
        mb = n_bytes / (1024 * 1024)
        return f"{mb:g} MB" if mb >= 1 else f"{n_bytes} bytes"

    def first_unserializable(value, path: str, active: set) -> tuple[str, str] | None:
        if value is None or isinstance(value, str | int | float):
            return None
        if isinstance(value, dict | list | tuple):
            if id(value) in active:
                return path, "a circular reference"
            active.add(id(value))
            try:
                if isinstance(value, dict):
                    for key, item in value.items():
                        inner = f"{path}.{key}" if path else str(key)
                        if key is not None and not isinstance(key, str | int | float):
                            return inner, f"a dict key of type {type(key).__name__}"
                        found = first_unserializable(item, inner, active)
                        if found:
                            return found
                else:
                    for index, item in enumerate(value):
                        found = first_unserializable(item, f"{path}[{index}]", active)
                        if found:
                            return found
            finally:
                active.discard(id(value))
            return None
        return path, f"a {type(value).__name__}"

    try:
        compiled = compile(code, "<code>", "exec")
    except SyntaxError as exc:
        where = f"line {exc.lineno}" if exc.lineno else "unknown line"
        text = (exc.text or "").strip()
        fail(
            "CodeExecutionError",
            f"{type(exc).__name__}: {exc.msg} ({where}{': ' + text if text else ''})",
        )
    except (ValueError, MemoryError) as exc:  # e.g. NUL bytes in the source
        fail("CodeExecutionError", f"the code cannot be compiled: {exc}")

    namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compiled, namespace)
        main = namespace.get("main")
        if callable(main):
            result = main(**request["inputs"])
        else:
            fail(
                "CodeExecutionError",
                "the code must define a function main(...) that returns a dict",
            )
    except MemoryError as exc:
        out_of_memory(exc)
    except BaseException as exc:  # SystemExit too: exit() is not a result
        try:
            message = explain(exc)
        except MemoryError:
            message = f"{type(exc).__name__} (and the memory limit of {memory_mb} MB was reached)"
        fail("CodeExecutionError", message)

    if not isinstance(result, dict):
        fail("CodeExecutionError", f"main() must return a dict, got {type(result).__name__}")
    try:
        body = json.dumps(result)
    except MemoryError as exc:
        out_of_memory(exc)
    except (TypeError, ValueError, RecursionError) as exc:
        try:
            found = first_unserializable(result, "", set())
        except RecursionError:
            found = None
        if found:
            path, what = found
            fail(
                "CodeExecutionError",
                f"output '{path}' of main() is {what}, which is not JSON-serializable; "
                "return only str, int, float, bool, None, list and dict values",
            )
        fail("CodeExecutionError", f"the value returned by main() cannot be encoded: {exc}")
    if len(body) > request["max_output_bytes"]:
        fail(
            "CodeExecutionError",
            f"the value returned by main() is {size(len(body))} as JSON, "
            f"more than the limit of {size(request['max_output_bytes'])}",
        )
    finish(b'{"ok": true, "result": ' + body.encode() + b"}")  # body is ASCII JSON
