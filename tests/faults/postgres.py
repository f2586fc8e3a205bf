"""A private PostgreSQL cluster for tests that restart or stop the database: `initdb` into a
fresh directory, its own port and socket directory, trust authentication; as root the
server runs as the `postgres` user (PostgreSQL refuses to run as root).

`start()` / `stop(mode)` (`fast`, `immediate`) / `restart(mode)`; `create_database()` gives
an empty database's SQLAlchemy URL. `close()` stops it and removes the directory.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from tests.faults.ports import free_port, wait_accepting

_CANDIDATE_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _bin(name: str) -> str:
    for directory in _CANDIDATE_BINS:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} not found: install Debian's postgresql package")
    return found


class PrivatePostgres:
    def __init__(self) -> None:
        # not under pytest's tmp_path: the postgres user must be able to reach it
        self.directory = Path(tempfile.mkdtemp(prefix="fanflow-faults-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self._initdb()

    def _run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["runuser", "-u", "postgres", "--", *args] if self._as_postgres else list(args)
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done

    def _initdb(self) -> None:
        self._run(
            [
                _bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ]
        )
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.directory}'\n"
                "fsync = off\nfull_page_writes = off\n"
                "max_connections = 200\n"
            )

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return (
            self._run([_bin("pg_ctl"), "-D", str(self.data), "status"], check=False).returncode == 0
        )

    def start(self) -> float:
        """Start the server; seconds until it accepted connections."""
        started = time.monotonic()
        self._run(
            [
                _bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.directory / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        wait_accepting(self.port, timeout_s=30, what="private PostgreSQL")
        return time.monotonic() - started

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m mode`: `immediate` is a crash (no checkpoint, connections cut)."""
        self._run([_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def restart(self, mode: str = "immediate") -> float:
        self.stop(mode)
        return self.start()

    def log_tail(self, size: int = 3000) -> str:
        try:
            text = (self.directory / "server.log").read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, PermissionError):
            return ""
        return text[-size:]

    async def execute(self, sql: str, database: str = "postgres") -> None:
        import asyncpg

        connection = await asyncpg.connect(self.admin_url(database), timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    async def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"faults_{uuid.uuid4().hex[:10]}"
        await self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


async def wait_until_up(database: PrivatePostgres, *, timeout_s: float = 30) -> None:
    """Until the server answers a query (it accepts connections a little before)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await database.execute("SELECT 1")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
