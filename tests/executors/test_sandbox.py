"""The Python sandbox, with real child processes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from fanflow import sandbox
from fanflow.errors import NodeError
from fanflow.sandbox.pool import SandboxPool


@pytest.fixture(autouse=True)
def _pool(sandbox: SandboxPool) -> None:
    global POOL
    POOL = sandbox


POOL: SandboxPool


async def run_python(code: str, inputs: dict, **limits: object) -> object:
    return await sandbox.run_python(code, inputs, pool=POOL, **limits)  # type: ignore[arg-type]


async def fails(code: str, inputs: dict | None = None, **limits: object) -> NodeError:
    with pytest.raises(NodeError) as caught:
        await run_python(code, inputs or {}, **limits)
    return caught.value


def sandboxed_pids(pool: SandboxPool | None = None) -> list[int]:
    """Host pids of every process inside the pool's sandboxes but their zygotes.

    The sandbox has its own PID namespace: the host sees its processes, with other pids.
    """
    namespaces = set()
    zygotes = set()
    for launcher in (pool or POOL).zygote_pids():
        for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
            zygotes.add(int(child))
            namespaces.add(os.readlink(f"/proc/{child}/ns/pid"))
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in zygotes:
            try:
                if os.readlink(entry / "ns" / "pid") in namespaces and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_no_sandboxed(pool: SandboxPool | None = None, within_s: float = 3.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while (left := sandboxed_pids(pool)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status  # a zombie has been killed already


def wait_dead(pids: list[int], within_s: float = 3.0) -> list[int]:
    """The pids still alive after `within_s` (SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + within_s
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


async def test_main_receives_inputs_and_values_keep_their_types() -> None:
    code = (
        "def main(a: int, b: float, text: str, items: list, missing=None) -> dict:\n"
        "    return {'sum': a + 1, 'half': b / 2, 'text': text.upper(), 'n': len(items),\n"
        "            'nested': {'list': [1, 2.5, None, True]}, 'missing': missing}\n"
    )
    result = await run_python(code, {"a": 41, "b": 3.0, "text": "héllo ✓", "items": [1, 2]})
    assert result == {
        "sum": 42,
        "half": 1.5,
        "text": "HÉLLO ✓",
        "n": 2,
        "nested": {"list": [1, 2.5, None, True]},
        "missing": None,
    }
    assert type(result["sum"]) is int and type(result["half"]) is float


async def test_the_standard_library_is_importable_and_nothing_else() -> None:
    code = (
        "import json, re, math, datetime, decimal, collections, hashlib, base64, zoneinfo\n"
        "def main():\n"
        "    day = datetime.date(2024, 2, 29) + datetime.timedelta(days=1)\n"
        "    return {'day': day.isoformat(), 'root': math.isqrt(49),\n"
        "            'json': json.loads('[1]'), 'word': re.findall(r'\\w+', 'a b')[1]}\n"
    )
    assert await run_python(code, {}) == {"day": "2024-03-01", "root": 7, "json": [1], "word": "b"}
    error = await fails("import pydantic\ndef main():\n    return {}\n")
    assert "No module named 'pydantic'" in str(error)
    assert "standard library only" in str(error)


async def test_printing_does_not_corrupt_the_result() -> None:
    code = (
        "import os, subprocess, sys\n"
        "def main():\n"
        '    print(\'{"ok": true, "result": {"forged": 1}}\')\n'
        "    print('to stderr', file=sys.stderr)\n"
        "    os.write(1, b'raw bytes on fd 1\\n')\n"
        "    subprocess.run([sys.executable, '-c', 'print(1)'])\n"
        "    return {'answer': 42}\n"
    )
    assert await run_python(code, {}) == {"answer": 42}


async def test_an_exception_names_the_line_in_the_users_code() -> None:
    code = "def helper(x):\n    return 10 / x\n\ndef main(x):\n    return {'r': helper(x)}\n"
    error = await fails(code, {"x": 0})
    assert error.error_type == "CodeExecutionError"
    message = str(error)
    assert message.startswith("ZeroDivisionError: division by zero (line 2, in helper)")
    assert "line 5, in main: return {'r': helper(x)}" in message
    assert "<string>" not in message and "_child_main" not in message  # no sandbox frames


async def test_a_syntax_error_names_its_line() -> None:
    error = await fails("def main():\n    return {'a': 1\n\nx = 2\n")
    assert error.error_type == "CodeExecutionError"
    assert "SyntaxError" in str(error) and "line 2" in str(error)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("def mian():\n    return {}\n", "must define a function main"),
        ("def main():\n    return [1, 2]\n", "main() must return a dict, got list"),
        ("def main():\n    return None\n", "main() must return a dict, got NoneType"),
        ("import sys\ndef main():\n    sys.exit(3)\n", "SystemExit: 3 (line 3, in main)"),
        ("def main(a):\n    return {}\n", "main() got an unexpected keyword argument 'b'"),
    ],
)
async def test_broken_contracts_are_explained(code: str, message: str) -> None:
    error = await fails(code, {"b": 1} if "main(a)" in code else {})
    assert error.error_type == "CodeExecutionError"
    assert message in str(error)


@pytest.mark.parametrize(
    ("value", "path", "kind"),
    [
        ("{'tags': {'a', 'b'}}", "tags", "a set"),
        ("{'when': {'at': [1, datetime.datetime(2024, 1, 1)]}}", "when.at[1]", "a datetime"),
        ("{'raw': b'bytes'}", "raw", "a bytes"),
    ],
)
async def test_a_result_that_is_not_json_names_the_output(value: str, path: str, kind: str) -> None:
    error = await fails(f"import datetime\ndef main():\n    return {value}\n")
    assert error.error_type == "CodeExecutionError"
    assert f"output '{path}' of main() is {kind}, which is not JSON-serializable" in str(error)


async def test_timeout_kills_the_code() -> None:
    started = time.monotonic()
    error = await fails("def main():\n    while True:\n        pass\n", timeout_s=1)
    assert error.error_type == "TimeoutError"
    assert str(error) == "code timed out after 1 s"
    assert time.monotonic() - started < 4


async def test_timeout_kills_every_process_the_code_started() -> None:
    # the code cannot write to the host's filesystem nor name host pids: the test looks
    # into the sandbox's PID namespace from the host instead
    code = (
        "import os, subprocess, sys\n"
        "def main():\n"
        "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "    for _ in range(3):\n"  # 8 busy processes
        "        os.fork()\n"
        "    while True:\n"
        "        pass\n"
    )
    run = asyncio.create_task(run_python(code, {}, timeout_s=1.5))
    seen = 0
    while not run.done():
        seen = max(seen, len(sandboxed_pids()))
        await asyncio.sleep(0.05)
    with pytest.raises(NodeError) as caught:
        await run
    assert caught.value.error_type == "TimeoutError"
    assert seen == 9
    assert wait_no_sandboxed() == []


async def test_processes_left_running_after_main_returns_are_killed() -> None:
    code = (
        "import subprocess, sys\n"
        "def main():\n"
        "    child = [sys.executable, '-c', 'import time; time.sleep(60)']\n"
        "    return {'pid': subprocess.Popen(child).pid}\n"
    )
    result = await run_python(code, {})
    assert isinstance(result, dict) and result["pid"] > 1
    assert wait_no_sandboxed() == []


async def test_a_fork_that_returns_from_main_does_not_answer() -> None:
    code = "import os\ndef main():\n    return {'parent': os.fork() != 0}\n"
    assert await run_python(code, {}) == {"parent": True}


async def test_cancelling_the_run_kills_the_code() -> None:
    code = "def main():\n    while True:\n        pass\n"
    run = asyncio.create_task(run_python(code, {}, timeout_s=30))
    while not sandboxed_pids():
        await asyncio.sleep(0.02)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert wait_no_sandboxed() == []


async def test_memory_bomb_hits_the_memory_limit() -> None:
    code = "def main():\n    block = bytearray(2 * 1024 ** 3)\n    return {'n': len(block)}\n"
    error = await fails(code, memory_mb=200)
    assert error.error_type == "MemoryError"
    assert str(error) == "code exceeded the memory limit of 200 MB (line 2, in main)"


async def test_the_code_cannot_lift_its_limits_or_keep_capabilities() -> None:
    code = (
        "import resource\n"
        "def main():\n"
        "    try:\n"
        "        resource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n"
        "        raised = True\n"
        "    except (ValueError, OSError):\n"
        "        raised = False\n"
        "    caps = [line.split()[1] for line in open('/proc/self/status')\n"
        "            if line.startswith(('CapEff', 'CapPrm', 'CapBnd'))]\n"
        "    return {'raised': raised, 'limit': resource.getrlimit(resource.RLIMIT_AS),\n"
        "            'caps': caps}\n"
    )
    result = await run_python(code, {}, memory_mb=300)
    limit = 300 * 1024 * 1024
    assert result == {"raised": False, "limit": [limit, limit], "caps": ["0" * 16] * 3}


async def test_cpu_limit() -> None:
    error = await fails("def main():\n    while True:\n        pass\n", cpu_s=1, timeout_s=10)
    assert error.error_type == "TimeoutError"
    assert str(error) == "code exceeded the CPU time limit of 1 s"


async def test_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FANFLOW_SECRET", "hunter2")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    code = "import os\ndef main():\n    return {'env': dict(os.environ)}\n"
    env = (await run_python(code, {}))["env"]
    assert set(env) == {
        "PATH",
        "LANG",
        "PYTHONHASHSEED",
        "PYTHONDONTWRITEBYTECODE",
        "HOME",
        "TMPDIR",
    }
    assert env["PATH"] == "/usr/bin:/bin"
    assert "hunter2" not in repr(env) and "secret" not in repr(env)


async def test_each_run_gets_a_fresh_working_directory_removed_afterwards() -> None:
    code = (
        "import os\n"
        "def main():\n"
        "    before = os.listdir('.')\n"
        "    with open('scratch.txt', 'w') as f:\n"
        "        f.write('x')\n"
        "    return {'cwd': os.getcwd(), 'home': os.environ['HOME'], 'before': before}\n"
    )
    first = await run_python(code, {})
    second = await run_python(code, {})
    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["before"] == [] and second["before"] == []
    assert first["cwd"] == first["home"] != second["cwd"]
    # inside the sandbox's /tmp, after the run: gone
    check = (
        "import os\ndef main(a, b):\n    return {'left': [os.path.exists(a), os.path.exists(b)]}\n"
    )
    left = await run_python(check, {"a": first["cwd"], "b": second["cwd"]})
    assert left == {"left": [False, False]}
    assert os.getcwd() not in (first["cwd"], second["cwd"])


async def test_a_large_result_is_refused() -> None:
    error = await fails("def main():\n    return {'s': 'x' * 5000}\n", max_output_bytes=1000)
    assert error.error_type == "CodeExecutionError"
    assert "more than the limit of 1000 bytes" in str(error)


async def test_a_process_that_dies_without_answering() -> None:
    error = await fails("import os\ndef main():\n    print('bye')\n    os._exit(3)\n")
    assert error.error_type == "CodeExecutionError"
    assert "exited with status 3 before main() returned" in str(error)
    assert "bye" in str(error)


async def test_special_floats_pass_through_for_the_output_checks_to_judge() -> None:
    result = await run_python("def main():\n    return {'x': float('inf'), 'y': 1e-7}\n", {})
    assert result == {"x": float("inf"), "y": 1e-7}
