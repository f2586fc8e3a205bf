"""Escape attempts against the code sandbox: each must fail (real namespaces, real services).

The worker's view is this test process: RabbitMQ and PostgreSQL listen on 127.0.0.1, the
repository and the library's source are on disk, the test runs as root.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
from pathlib import Path

import pytest

import fanflow
from fanflow import sandbox
from fanflow.errors import NodeError
from fanflow.executors import ExecutionContext, execute_task
from fanflow.messages import NodeTask
from fanflow.nodes.outputs import CodeLimits
from fanflow.sandbox.pool import SandboxPool

from .test_sandbox import wait_dead

REPOSITORY = Path(__file__).resolve().parents[2]
LIBRARY = Path(fanflow.__file__).resolve().parent


async def run(pool: SandboxPool, code: str, **inputs: object) -> dict:
    result = await sandbox.run_python(code, inputs, pool=pool)
    assert isinstance(result, dict)
    return result


def reachable(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("port", [5672, 5432])
async def test_the_broker_and_the_database_are_unreachable(sandbox: SandboxPool, port: int) -> None:
    assert reachable(port), f"start the shared service on 127.0.0.1:{port}"
    code = (
        "import socket\n"
        "def main(port):\n"
        "    try:\n"  # seccomp refuses the socket itself; the empty netns any connect
        "        s = socket.socket()\n"
        "        s.settimeout(2)\n"
        "        s.connect(('127.0.0.1', port))\n"
        "        return {'connected': True}\n"
        "    except OSError as exc:\n"
        "        return {'connected': False, 'error': str(exc)}\n"
    )
    result = await run(sandbox, code, port=port)
    assert result["connected"] is False
    probe = (
        "import socket\n"
        "def main():\n"
        "    try:\n"
        "        return {'ifs': [name for _, name in socket.if_nameindex()]}\n"
        "    except OSError as exc:\n"  # its netlink socket is refused by seccomp
        "        return {'errno': exc.errno}\n"
    )
    interfaces = await run(sandbox, probe)
    assert interfaces in ({"ifs": []}, {"ifs": ["lo"]}, {"errno": 1})  # no route out


async def test_secrets_the_store_and_the_repository_are_not_visible(
    sandbox: SandboxPool, tmp_path: Path
) -> None:
    store = tmp_path / "fanflow.db"
    sqlite3.connect(store).close()
    assert Path("/etc/shadow").exists() and store.exists()
    code = (
        "import os\n"
        "def main(paths):\n"
        "    seen = {}\n"
        "    for path in paths:\n"
        "        try:\n"
        "            with open(path, 'rb') as f:\n"
        "                seen[path] = len(f.read())\n"
        "        except OSError as exc:\n"
        "            seen[path] = type(exc).__name__\n"
        "    return {'seen': seen, 'root': sorted(os.listdir('/'))}\n"
    )
    paths = ["/etc/shadow", "/etc/passwd", str(store), str(REPOSITORY / "pyproject.toml")]
    paths.append(str(LIBRARY / "sandbox" / "process.py"))
    result = await run(sandbox, code, paths=paths)
    assert result["seen"] == dict.fromkeys(paths, "FileNotFoundError")
    assert "etc" not in result["root"] and "work" not in result["root"]


async def test_the_interpreter_and_the_library_are_read_only(sandbox: SandboxPool) -> None:
    code = (
        "import os, sys\n"
        "def main(library):\n"
        "    results = {}\n"
        "    for target in [os.__file__, sys.executable, library + '/sandbox/process.py']:\n"
        "        try:\n"
        "            with open(target, 'a') as f:\n"
        "                f.write('# pwned')\n"
        "            results[target] = 'written'\n"
        "        except OSError as exc:\n"
        "            results[target] = type(exc).__name__\n"
        "    return {'results': results, 'uid': os.getuid(), 'euid': os.geteuid()}\n"
    )
    result = await run(sandbox, code, library=str(LIBRARY))
    assert "written" not in result["results"].values()
    assert result["uid"] == result["euid"] != 0
    assert "pwned" not in (LIBRARY / "sandbox" / "process.py").read_text()


async def test_the_worker_and_the_zygote_cannot_be_killed(sandbox: SandboxPool) -> None:
    code = (
        "import os, signal\n"
        "def main(worker):\n"
        "    tried = []\n"
        "    for pid in (os.getppid(), 1, worker):\n"
        "        try:\n"
        "            os.kill(pid, signal.SIGKILL)\n"
        "            tried.append('sent')\n"
        "        except OSError as exc:\n"
        "            tried.append(type(exc).__name__)\n"
        "    return {'tried': tried, 'ppid': os.getppid()}\n"
    )
    await asyncio.gather(*(run(sandbox, "def main():\n    return {}\n") for _ in range(2)))
    zygotes = sandbox.zygote_pids()
    result = await run(sandbox, code, worker=os.getpid())
    assert result["ppid"] == 1  # the zygote is init of the sandbox's PID namespace
    assert result["tried"][2] in ("ProcessLookupError", "sent")  # no such pid in there
    # SIGKILL to init from inside its namespace is ignored: the zygote serves on
    assert await run(sandbox, "def main():\n    return {'ok': 1}\n") == {"ok": 1}
    assert sorted(zygotes) == sorted(sandbox.zygote_pids())  # none died, none replaced


async def test_setsid_and_double_fork_leave_nothing_alive(sandbox: SandboxPool) -> None:
    from .test_sandbox import wait_no_sandboxed

    code = (
        "import os, time\n"
        "def main():\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "        os._exit(0)\n"
        "    time.sleep(0.2)\n"
        "    return {'ok': 1}\n"
    )
    assert await run(sandbox, code) == {"ok": 1}
    assert wait_no_sandboxed(sandbox) == []


async def test_a_fork_bomb_is_bounded_and_cleaned_up(sandbox: SandboxPool) -> None:
    from .test_sandbox import wait_no_sandboxed

    code = (
        "import os, time\n"
        "def main():\n"
        "    children = 0\n"
        "    while children < 10_000:\n"
        "        try:\n"
        "            pid = os.fork()\n"
        "        except OSError:\n"
        "            break\n"
        "        if pid == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        children += 1\n"
        "    return {'children': children}\n"
    )
    result = await run(sandbox, code)
    assert 0 < result["children"] < sandbox.max_processes
    assert wait_no_sandboxed(sandbox) == []


async def test_memory_is_bounded_in_aggregate() -> None:
    # 6 processes of 150 MB each fit the per-process limit (200 MB) but not the aggregate
    # (the memory cgroup of 200 + 16 + 64 MB): the kernel kills what goes over. A child
    # that filled its block may be killed later for a newer one, so what is bounded is how
    # many hold their block at once: the children still alive at the end.
    code = (
        "import os, time\n"
        "def main():\n"
        "    pids = []\n"
        "    for _ in range(6):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            block = bytearray(150 * 1024 * 1024)\n"
        "            for i in range(0, len(block), 4096):\n"
        "                block[i] = 1\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        pids.append(pid)\n"
        "    time.sleep(3)\n"
        "    alive = sum(1 for pid in pids if os.waitpid(pid, os.WNOHANG) == (0, 0))\n"
        "    return {'alive': alive}\n"
    )
    with SandboxPool(size=1, memory_mb=200, tmp_mb=16) as pool:
        try:
            result = await sandbox.run_python(code, {}, pool=pool, memory_mb=200, timeout_s=20)
        except NodeError as exc:  # the OOM killer may take the parent too
            assert exc.error_type in ("CodeExecutionError", "SandboxError"), exc
        else:
            assert isinstance(result, dict)
            assert result["alive"] * 150 <= 200 + 16 + 64, result


async def test_the_tmp_disk_is_bounded(sandbox: SandboxPool) -> None:
    code = (
        "def main():\n"
        "    written = 0\n"
        "    try:\n"
        "        for n in range(100):\n"
        "            with open(f'f{n}', 'wb') as f:\n"
        "                f.write(b'x' * (8 * 1024 * 1024))\n"
        "            written += 8\n"
        "    except OSError as exc:\n"
        "        return {'written_mb': written, 'error': exc.errno}\n"
        "    return {'written_mb': written}\n"
    )
    result = await run(sandbox, code)
    assert result["written_mb"] <= sandbox.tmp_mb and result.get("error") == 28  # ENOSPC


async def test_a_killed_zygote_is_replaced() -> None:
    with SandboxPool(size=1) as pool:
        await run(pool, "def main():\n    return {}\n")
        killed = pool.zygote_pids()
        assert len(killed) == 1
        os.kill(killed[0], signal.SIGKILL)
        assert wait_dead(killed) == []
        results = await asyncio.gather(
            *(run(pool, "def main(i):\n    return {'i': i}\n", i=i) for i in range(3))
        )
        assert results == [{"i": i} for i in range(3)]
        assert len(pool.zygote_pids()) == 1 and pool.zygote_pids() != killed


async def test_json_and_b64decode_need_no_import(sandbox: SandboxPool) -> None:
    code = "def main(text):\n    return {'v': json.loads(b64decode(text).decode())}\n"
    assert await run(sandbox, code, text="eyJhIjogWzEsIDJdfQ==") == {"v": {"a": [1, 2]}}


async def test_a_10000_item_list_passes_with_raised_limits(sandbox: SandboxPool) -> None:
    task = NodeTask(
        task_id="run-1/-/code1/0",
        run_id="run-1",
        node_id="code1",
        node_type="code",
        node_title="Many",
        data={
            "type": "code",
            "code_language": "python3",
            "code": "def main():\n    return {'names': [f'n{i}' for i in range(10_000)]}\n",
            "variables": [],
            "outputs": {"names": {"type": "array[string]"}},
        },
        variables={},
    )
    default = await execute_task(task, ExecutionContext(code_sandbox=sandbox))
    assert default.status == "failed" and "at most 30" in (default.error or "")
    raised = ExecutionContext(
        code_sandbox=sandbox, code_limits=CodeLimits(max_string_array_length=10_000)
    )
    result = await execute_task(task, raised)
    assert result.status == "succeeded", result.error
    assert len(result.outputs["names"]) == 10_000


def test_a_tampered_path_cache_binds_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached list of read-only paths is used only when it holds nothing the scan could
    not have produced: a planted /etc/shadow makes the sandbox scan again."""
    from fanflow.sandbox import isolation

    cache = tmp_path / "sandbox-paths.json"
    monkeypatch.setattr(isolation, "_cache_file", lambda: cache)
    scanned = isolation._readonly_paths.__wrapped__()
    assert json.loads(cache.read_text())["paths"] == list(scanned)
    record = json.loads(cache.read_text())
    cache.write_text(json.dumps({**record, "paths": [*record["paths"], "/etc/shadow"]}))
    again = isolation._readonly_paths.__wrapped__()
    assert "/etc/shadow" not in again and again == scanned


SECCOMP_PROBE = """
import ctypes, os, platform, socket
NUMBERS = {
    "x86_64": {"kexec_load": 246, "bpf": 321, "keyctl": 250, "add_key": 248,
               "perf_event_open": 298, "process_vm_readv": 310, "process_vm_writev": 311,
               "setns": 308, "umount2": 166, "io_uring_setup": 425},
    "aarch64": {"kexec_load": 104, "bpf": 280, "keyctl": 219, "add_key": 217,
                "perf_event_open": 241, "process_vm_readv": 270, "process_vm_writev": 271,
                "setns": 268, "umount2": 39, "io_uring_setup": 425},
}[platform.machine()]
def main():
    libc = ctypes.CDLL(None, use_errno=True)
    def errno_of(result):
        return 0 if result == 0 else ctypes.get_errno()
    found = {
        "ptrace": errno_of(libc.ptrace(0, 0, 0, 0)),  # PTRACE_TRACEME: allowed to anyone
        "mount": errno_of(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
        "unshare": errno_of(libc.unshare(0x10000000)),
    }
    for name, number in NUMBERS.items():
        found[name] = errno_of(libc.syscall(number, 0, 0, 0, 0, 0, 0))
    for family, name in ((socket.AF_INET, "inet"), (socket.AF_INET6, "inet6"),
                         (socket.AF_NETLINK, "netlink"), (socket.AF_PACKET, "packet")):
        try:
            socket.socket(family, socket.SOCK_DGRAM if family != socket.AF_PACKET else socket.SOCK_RAW).close()
            found["socket_" + name] = 0
        except OSError as exc:
            found["socket_" + name] = exc.errno
    left, right = socket.socketpair(socket.AF_UNIX)
    left.send(b"x")
    status = open("/proc/self/status").read()
    mode = [line.split()[1] for line in status.splitlines() if line.startswith("Seccomp:")]
    pid = os.fork()  # plain fork (clone without namespace flags) still works
    if pid == 0:
        os._exit(7)
    _, code = os.waitpid(pid, 0)
    return {"errors": found, "unix": right.recv(1).decode(), "seccomp": mode,
            "fork": os.waitstatus_to_exitcode(code), "sum": sum(range(10))}
"""


async def test_seccomp_denies_what_user_code_never_needs(sandbox: SandboxPool) -> None:
    import errno

    result = await run(sandbox, SECCOMP_PROBE)
    assert result["seccomp"] == ["2"]  # a filter is installed
    denied = {name: code for name, code in result["errors"].items() if code != errno.EPERM}
    assert denied == {}, f"not refused with EPERM: {denied}"
    assert len(result["errors"]) == 17
    assert (result["unix"], result["fork"], result["sum"]) == ("x", 7, 45)


async def test_seccomp_refuses_a_namespace_through_clone(sandbox: SandboxPool) -> None:
    code = (
        "import ctypes, ctypes.util\n"
        "def main():\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    # clone(CLONE_NEWUSER | SIGCHLD) through the raw syscall (x86_64: 56)\n"
        "    result = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)\n"
        "    if result == 0:\n"
        "        libc._exit(0)\n"
        "    return {'result': result, 'errno': ctypes.get_errno()}\n"
    )
    import errno
    import platform

    assert platform.machine() == "x86_64", "the raw clone number below is x86_64's"
    result = await run(sandbox, code)
    assert result == {"result": -1, "errno": errno.EPERM}
