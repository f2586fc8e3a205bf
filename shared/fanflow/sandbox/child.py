"""The sandbox side of `fanflow.sandbox.process`: the zygote program and the per-call child.

Not imported: `fanflow.sandbox.pool` reads this file's text and passes it to `python -c` with
one JSON argument (its config), so it must stay self-contained (stdlib only, nothing from
fanflow) and run under the interpreter flags `-P -s -S -B`. The zygote imports what a call
needs once, then forks one fresh child per call (`_serve`); the child reads the request
from fd 0, sets the limits, runs the user's `main()` and writes one JSON verdict to its
result fd, then exits without interpreter shutdown.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile

# stdlib-only and import-free at run time: these names exist for the type checker alone
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes
    from typing import Any

_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_PR_SET_CHILD_SUBREAPER = 36
_CLONE_NEWUSER = 0x10000000
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
#: the BPF program run children install before user code (`fanflow.sandbox.seccomp`)
_SECCOMP_PROGRAM = b""


def _libc() -> ctypes.CDLL:  # pragma: no cover - runs in the sandbox
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    return libc


def _enter_user_namespace(uid: int) -> None:  # pragma: no cover - runs in the sandbox
    """Become `uid` (on the host too) in a user namespace of our own, then forbid new ones.

    Runs first in the zygote when the worker is root: bubblewrap (privileged mode) gave us
    only CAP_SETUID/CAP_SETGID, which `setuid` drops with the rest.
    """
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    libc = _libc()
    libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # /proc/self/*_map stay ours to write
    if libc.unshare(_CLONE_NEWUSER) != 0:
        raise OSError(f"unshare(CLONE_NEWUSER) failed: errno {__import__('ctypes').get_errno()}")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")  # user code cannot nest namespaces (kernel attack surface)
    _drop_privileges(libc)


def _drop_privileges(libc: ctypes.CDLL) -> None:  # pragma: no cover - runs in the sandbox
    import ctypes

    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)  # other same-uid processes can't ptrace us
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries grant nothing
    for capability in range(64):  # exec'd programs get no caps either
        libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, self
    libc.capset(header, (ctypes.c_uint32 * 6)())  # no effective/permitted/inheritable


def _install_seccomp(program: bytes) -> None:  # pragma: no cover - runs in the sandbox
    """Install a BPF seccomp filter (8-byte instructions) on this process and its children."""
    import ctypes

    class _Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: errno {ctypes.get_errno()}")
    buffer = ctypes.create_string_buffer(program, len(program))
    prog = _Program(len(program) // 8, ctypes.cast(buffer, ctypes.c_char_p))
    address = ctypes.addressof(prog)
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, address, 0, 0) != 0:
        raise OSError(f"installing the seccomp filter failed: errno {ctypes.get_errno()}")


def _serve(config: dict[str, Any]) -> None:  # pragma: no cover - runs in the sandbox
    """The zygote: one call at a time, each in a fresh forked child; then nothing survives.

    Protocol on the SOCK_SEQPACKET socket `config["fd"]`: the worker sends
    `{"timeout_s": t}` with three fds (request read end, result write end, output write end),
    or `kill` while a call runs; the zygote answers each call with
    `{"status": wait status, "timed_out": bool}` once every process of the call is gone.
    """
    global _SECCOMP_PROGRAM
    _SECCOMP_PROGRAM = bytes.fromhex(config.get("seccomp", ""))
    sock = socket.socket(fileno=config["fd"])
    os.environ.pop("PWD", None)  # bubblewrap's --chdir sets it; the environment is ours
    if config.get("uid") is not None:
        _enter_user_namespace(config["uid"])
    libc = _libc()
    isolated = os.getpid() == 1  # init of our own PID namespace
    if not isolated:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come back to us
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sock.send(b"ready")
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 4096, 3)
        except OSError:
            message, fds = b"", []
        if not message:  # the worker closed the pool or died
            _kill_all(isolated, 0)
            os._exit(0)
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            continue
        timeout_s = json.loads(message).get("timeout_s") or None
        workdir = tempfile.mkdtemp(prefix="fanflow-code-")
        pid = os.fork()
        if pid == 0:
            try:
                _child(fds, workdir, sock.fileno(), isolated, config)
            finally:
                os._exit(70)
        for fd in fds:
            os.close(fd)
        status, timed_out, worker_gone = _wait(pid, sock, timeout_s)
        _kill_all(isolated, pid)
        shutil.rmtree(workdir, ignore_errors=True)
        if worker_gone:
            os._exit(0)
        sock.send(json.dumps({"status": status, "timed_out": timed_out}).encode())


def _wait(
    pid: int, sock: socket.socket, timeout_s: float | None
) -> tuple[int, bool, bool]:  # pragma: no cover
    """Wait for the call's child; kill it on the deadline or when the worker says `kill`."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(sock.fileno(), select.POLLIN)
    timed_out = worker_gone = False
    try:
        events = poller.poll(None if timeout_s is None else timeout_s * 1000)
        if not events:
            timed_out = True
        elif any(fd == sock.fileno() for fd, _ in events):
            worker_gone = not sock.recv(64)  # `kill`, or EOF
        if timed_out or any(fd == sock.fileno() for fd, _ in events):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
    return status, timed_out, worker_gone


def _kill_all(isolated: bool, pid: int) -> None:  # pragma: no cover - runs in the sandbox
    """Kill every process the call left behind and reap them."""
    if isolated:  # init of the namespace: kill(-1) reaches every other process in it
        while True:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
    if pid:  # unsafe-process mode: the call's session, then whatever came back to us
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    for _ in range(100):
        children = _children()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        if not children:
            return


def _children() -> list[int]:  # pragma: no cover - runs in the sandbox
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            return [int(pid) for pid in f.read().split()]
    except OSError:
        return []


def _child(
    fds: list[int], workdir: str, sock_fd: int, isolated: bool, config: dict[str, Any]
) -> None:  # pragma: no cover
    """The per-call child: plumbing, then limits, then the user's `main`."""
    request_fd, result_fd, output_fd = fds
    os.setsid()
    os.close(sock_fd)  # user code must not talk to the worker
    os.dup2(request_fd, 0)
    os.dup2(output_fd, 1)  # user prints and fd 1 go to the output pipe
    os.dup2(output_fd, 2)
    os.close(request_fd)
    os.close(output_fd)
    if result_fd < 3:
        result_fd = os.dup(result_fd)
    os.closerange(3, result_fd)
    os.closerange(result_fd + 1, 65536)
    os.chdir(workdir)
    os.environ["HOME"] = workdir
    os.environ["TMPDIR"] = workdir
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # kept on a crash
    chunks = []
    while chunk := os.read(0, 1 << 20):
        chunks.append(chunk)
    request = json.loads(b"".join(chunks))
    del chunks
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")  # the memory cgroup's OOM killer takes user code, not the zygote
    _run_call(request, result_fd, isolated)


def _run_call(request: dict[str, Any], result_fd: int, isolated: bool) -> None:  # pragma: no cover
    """Set the limits, run the user's `main()`, write one JSON verdict to `result_fd`."""
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
    limit(resource.RLIMIT_NOFILE, request["max_open_files"])
    if isolated and request.get("max_processes"):
        # counted per uid inside our own user namespace: this sandbox's processes only
        limit(resource.RLIMIT_NPROC, request["max_processes"])
    if request["cpu_s"]:
        limit(resource.RLIMIT_CPU, request["cpu_s"], hard_extra=1)  # soft: SIGXCPU
    with contextlib.suppress(OSError, AttributeError):  # where this fails the limits hold
        _drop_privileges(_libc())
    if _SECCOMP_PROGRAM:
        _install_seccomp(_SECCOMP_PROGRAM)  # no user code runs without it

    code: str = request["code"]
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

    def user_frames(exc: BaseException, keep: int = 8) -> tuple[list[tuple[int, str]], int]:
        """The last `keep` (line, function) of the user's frames, and how many there were.

        Walks the traceback by hand and then drops it: after a MemoryError or a deep
        recursion, formatting the whole traceback could fail or take seconds.
        """
        frames: list[tuple[int, str]] = []
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
            shown: list[list[Any]] = []  # [frame, times]: a recursion shows once
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

    def first_unserializable(value: object, path: str, active: set[int]) -> tuple[str, str] | None:
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

    # as in Dify's runner, `main` sees `json` and `b64decode` without importing them
    namespace: dict[str, Any] = {
        "__name__": "__main__",
        "__builtins__": __builtins__,
        "json": json,
        "b64decode": base64.b64decode,
    }
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


if __name__ == "__main__":  # `python -c` runs this file as __main__
    _serve(json.loads(sys.argv[1]))
