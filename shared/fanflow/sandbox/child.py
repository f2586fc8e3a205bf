"""The child side of `fanflow.sandbox.process`: the program the sandboxed interpreter runs.

Not imported: `fanflow.sandbox.process` reads this file's text and passes it to `python -c`, so it must
stay self-contained (stdlib only, nothing from fanflow) and run under the interpreter flags
`-P -s -S -B`. It reads the request from stdin, sets the limits, runs the user's `main()` and
writes one JSON verdict to the original stdout, then exits without interpreter shutdown.
"""

import contextlib
import json
import os
import resource
import sys


def _child_main() -> None:  # pragma: no cover - runs in the sandboxed interpreter
    """Entry point of the child interpreter."""
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


if __name__ == "__main__":  # `python -c` runs this file as __main__
    _child_main()
