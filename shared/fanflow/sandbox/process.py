"""Running a code node's untrusted Python: a boundary, served warm by a pool of zygotes.

`run_python` hands the request to a `SandboxPool` (`fanflow.sandbox.pool`): a zygote that
has already started the interpreter forks a fresh child for the call, which exits after
it; no interpreter starts per call. Before any user code runs the child lowers its resource
limits (address space, CPU, file size, open files, processes, no core dumps), makes itself
non-dumpable, forbids privilege gains and drops every capability. Its environment is
scrubbed and its working directory an empty temporary one, removed after the call. The
request goes in on fd 0; the verdict comes back as JSON on its own pipe, while `print()`
and fd 1/2 go to an output pipe whose tail explains a crash. `json` and `b64decode` are
module-level names of the user's code, as in Dify.

What the boundary is (the default, `FANFLOW_SANDBOX=namespaces`, see
`fanflow.sandbox.isolation`): every zygote lives in its own user, PID, network, mount, IPC
and UTS namespaces, as uid 65534 when the worker is root (the worker's uid otherwise),
with no capabilities and no way to create namespaces. It sees only the interpreter, its
standard library and the shared libraries they load, read-only, a private /proc and /dev,
and a tmpfs /tmp of `tmp_mb`: no /etc, no repository, no store, no library source. There is
no network route (the broker, the database, the metadata service are unreachable). The
zygote is init of its PID namespace: user code cannot signal it (SIGKILL to init from
inside is ignored) nor see the worker, and after every call the zygote kills every other
process in the namespace, so `setsid()` and double forks escape nothing. Process count is
bounded by RLIMIT_NPROC (per sandbox, in its own user namespace) and a pids cgroup;
memory in aggregate by a memory cgroup where the worker may create one (root with
writable cgroups), else only per process by RLIMIT_AS.

What it is not: calls served by the same zygote share its tmpfs (each has its own
directory, removed afterwards) and, on a host without writable cgroups, memory is bounded
per process only (max_processes x memory_mb in aggregate). No seccomp filter narrows the
system calls user code may make, so the kernel's whole syscall surface is reachable (as in
any container); it is not gVisor. Network for user code, preinstalled packages and
JavaScript are not offered. `FANFLOW_SANDBOX=unsafe-process` runs the zygote as a plain
process with the limits only: no boundary at all (the worker logs a loud warning).
"""

from __future__ import annotations

import json
import signal
from typing import Any

from fanflow.errors import NodeError
from fanflow.sandbox.pool import CallOutcome, SandboxPool

DEFAULT_MAX_OUTPUT_BYTES = 8 * 1024 * 1024
#: no single file the code writes may grow past this (RLIMIT_FSIZE)
MAX_FILE_BYTES = 64 * 1024 * 1024
#: open files per process (RLIMIT_NOFILE)
MAX_OPEN_FILES = 256


async def run_python(
    code: str,
    inputs: dict[str, Any],
    *,
    pool: SandboxPool,
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
    (address space over `memory_mb`) or ``SandboxError`` (no sandbox could start, or it
    died during the call).
    """
    request = _encode_request(code, inputs, memory_mb, cpu_s, max_output_bytes, pool)
    outcome = await pool.call(request, timeout_s=timeout_s, max_output_bytes=max_output_bytes)
    return _interpret(
        outcome,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        cpu_s=cpu_s,
        max_output_bytes=max_output_bytes,
    )


def _encode_request(
    code: str,
    inputs: dict[str, Any],
    memory_mb: int,
    cpu_s: int | None,
    max_output_bytes: int,
    pool: SandboxPool,
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
        "max_open_files": MAX_OPEN_FILES,
        "max_processes": pool.max_processes,
        "max_output_bytes": max_output_bytes,
    }
    return json.dumps(request).encode()


def _interpret(
    run: CallOutcome, *, timeout_s: float, memory_mb: int, cpu_s: int | None, max_output_bytes: int
) -> Any:
    if run.timed_out:
        raise NodeError(f"code timed out after {timeout_s:g} s", error_type="TimeoutError")
    if run.output_overflow:
        raise NodeError(
            f"the value returned by main() is larger than {_size(max_output_bytes)}",
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
    raise _crash(run.returncode, bytes(run.stderr_tail), memory_mb, cpu_s)


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
