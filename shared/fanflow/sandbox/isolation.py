"""How a sandbox zygote is launched: inside bubblewrap namespaces, or as a bare process.

`namespaces` (the default): `bwrap` gives the zygote its own PID (it is init there, so
nothing outlives it and nothing inside can signal it or the worker), network (no route
anywhere: the broker and the database are unreachable), mount (a fresh root holding only
the interpreter, its standard library and the shared libraries they load, read-only, plus
a size-limited tmpfs `/tmp`), IPC, UTS and cgroup namespaces, and a user namespace. When the
worker is root, bubblewrap runs privileged and the zygote turns itself into `nobody`
(uid 65534, on the host too) in a user namespace of its own before anything else; when it
is not, bubblewrap's unprivileged mode maps the worker's uid. Either way user code has no
capabilities and cannot create namespaces. Where cgroups are writable (root on a cgroup
v1 or v2 host), each zygote gets a memory and a pids cgroup: the bound in aggregate.

`unsafe-process`: the zygote is a plain child of the worker with today's limits only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

#: uid (and gid) user code runs as when the worker is root
SANDBOX_UID = 65534
#: -P: no script dir or cwd on sys.path; -s/-S: no user or site packages (stdlib only);
#: -B: no .pyc files. Not -I: its -E would ignore PYTHONHASHSEED (the environment is ours).
INTERPRETER_FLAGS = ("-P", "-s", "-S", "-B")
_CGROUP_ROOT = Path("/sys/fs/cgroup")


class SandboxUnavailable(Exception):
    """The host cannot give the sandbox its namespaces."""


def interpreter() -> str:
    """The real interpreter behind this process (not a venv's symlink)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def environment(tmp: str) -> dict[str, str]:
    """Nothing inherited: no FANFLOW_*, *_API_KEY, AWS_* or proxies reach user code."""
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": tmp,
        "TMPDIR": tmp,
    }


@functools.cache
def _readonly_paths() -> tuple[str, ...]:
    """The interpreter, its stdlib and every shared library they load (from `ldd`).

    Scanning the stdlib's extension modules with `ldd` costs ~0.3 s, so the list is kept in
    a per-user cache file keyed by the interpreter and its `lib-dynload` directory; a cached
    list is used only if every entry is one of those directories or a shared library."""
    python = interpreter()
    stdlib = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
    dynload = Path(stdlib["platstdlib"]) / "lib-dynload"
    directories = {stdlib["stdlib"], stdlib["platstdlib"], "/usr/share/zoneinfo"}
    key = _cache_key(python, dynload)
    cached = _cached_paths(key, python, directories)
    if cached is not None:
        return cached
    paths = {python, stdlib["stdlib"], stdlib["platstdlib"]}
    objects = [python, *map(str, dynload.glob("*.so"))]
    ldd = shutil.which("ldd")
    if ldd:
        listing = subprocess.run(
            [ldd, *objects], capture_output=True, text=True, check=False
        ).stdout
        for line in listing.splitlines():
            for word in line.split():
                if word.startswith("/") and os.path.exists(word):
                    paths.add(os.path.realpath(word))
                    paths.add(word)
    if os.path.isdir("/usr/share/zoneinfo"):
        paths.add("/usr/share/zoneinfo")
    # no parent of another entry twice; sorted so parents are bound before children
    found = tuple(sorted(p for p in paths if os.path.exists(p)))
    _store_paths(key, found)
    return found


def _cache_file() -> Path:
    return Path.home() / ".cache" / "fanflow" / "sandbox-paths.json"


def _cache_key(python: str, dynload: Path) -> str:
    try:
        stamps = (os.stat(python).st_mtime_ns, dynload.stat().st_mtime_ns)
    except OSError:
        return ""
    return f"{os.path.realpath(python)}|{dynload}|{stamps[0]}|{stamps[1]}"


def _cached_paths(key: str, python: str, directories: set[str]) -> tuple[str, ...] | None:
    if not key:
        return None
    try:
        record = json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    paths = record.get("paths")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        return None

    def allowed(path: str) -> bool:
        # only what the scan itself can produce: no other file is ever bound from a cache
        name = os.path.basename(path)
        is_library = ".so" in name and os.path.isfile(path)
        return (path in directories or path == python or is_library) and os.path.exists(path)

    return tuple(paths) if all(allowed(p) for p in paths) else None


def _store_paths(key: str, paths: tuple[str, ...]) -> None:
    if not key:
        return
    target = _cache_file()
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        partial.write_text(json.dumps({"key": key, "paths": list(paths)}), encoding="utf-8")
        os.replace(partial, target)


def bwrap_command(config_json: str, child_source: str, *, tmp_mb: int) -> list[str]:
    """The command line of a namespaced zygote."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed")
    command = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    command += ["--unshare-cgroup-try", "--die-with-parent", "--as-pid-1", "--new-session"]
    if os.geteuid() == 0:  # privileged mode; the zygote drops to SANDBOX_UID itself
        command += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        command += ["--unshare-user", "--disable-userns"]
    command += ["--clearenv"]
    for name, value in environment("/tmp").items():
        command += ["--setenv", name, value]
    paths = _readonly_paths()
    # bwrap would copy the host's modes for the parents it creates (/root is 0700)
    parents = {str(parent) for path in paths for parent in Path(path).parents} - {"/"}
    for parent in sorted(parents - set(paths), key=lambda p: p.count("/")):
        command += ["--perms", "0755", "--dir", parent]
    for path in paths:
        command += ["--ro-bind", path, path]
    command += ["--dev", "/dev", "--proc", "/proc"]
    command += ["--size", str(tmp_mb * 1024 * 1024), "--perms", "1777", "--tmpfs", "/tmp"]
    command += ["--chdir", "/tmp"]
    return [*command, interpreter(), *INTERPRETER_FLAGS, "-c", child_source, config_json]


def process_command(config_json: str, child_source: str) -> list[str]:
    """The command line of an unsafe-process zygote (no namespaces)."""
    return [interpreter(), *INTERPRETER_FLAGS, "-c", child_source, config_json]


class Cgroups:
    """A memory and a pids cgroup for one zygote, where this process may create them."""

    def __init__(self, name: str, *, memory_bytes: int, max_processes: int) -> None:
        self.dirs: list[Path] = []
        for controller, limits in (
            ("memory", _memory_limits(memory_bytes)),
            ("pids", {"pids.max": str(max_processes)}),
        ):
            parent = _cgroup_dir(controller)
            if parent is None:
                continue
            path = parent / name
            try:
                path.mkdir(exist_ok=True)
                for file, value in limits.items():
                    if (path / file).exists():
                        (path / file).write_text(value)
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
                continue
            if path not in self.dirs:
                self.dirs.append(path)

    def join(self) -> None:
        """Move the calling process in (from `preexec_fn`, before exec)."""
        for path in self.dirs:
            (path / "cgroup.procs").write_text("0")

    def remove(self) -> None:
        for path in self.dirs:
            with contextlib.suppress(OSError):
                path.rmdir()


def _memory_limits(memory_bytes: int) -> dict[str, str]:
    return {
        "memory.limit_in_bytes": str(memory_bytes),  # v1
        "memory.memsw.limit_in_bytes": str(memory_bytes),  # v1 with swap accounting
        "memory.max": str(memory_bytes),  # v2
        "memory.swap.max": "0",  # v2
    }


def _cgroup_dir(controller: str) -> Path | None:
    """This process's own cgroup directory for `controller` (v1), or the v2 one."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            directory = _CGROUP_ROOT / controller / path.lstrip("/")
            return directory if os.access(directory, os.W_OK) else None
    for line in lines:
        if line.startswith("0::"):
            directory = _CGROUP_ROOT / line[3:].lstrip("/")
            enabled = directory / "cgroup.subtree_control"
            if os.access(directory, os.W_OK) and controller in _read(enabled):
                return directory
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
