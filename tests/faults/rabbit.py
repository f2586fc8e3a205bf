"""A private RabbitMQ node for tests that kill the broker: its own node name, AMQP and
distribution ports, mnesia and log directories, config and cookie, so nothing it does
touches the machine's shared broker.

`start()` boots it (about 5 s), `kill()` is `kill -9` of the Erlang VM, `stop()` a clean
shutdown; `start()` again brings the same node back with its durable queues (quorum
queues recover their messages). `close()` stops it and removes its directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests.faults.ports import free_port, wait_accepting, wait_refusing

#: the real start script (the /usr/sbin wrapper switches to the rabbitmq user and drops
#: the environment that makes this node private)
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
BOOT_TIMEOUT_S = 60.0
#: the broker closes a consumer's channel that holds a delivery longer than this (ms);
#: deploy/rabbitmq/rabbitmq.conf sets the same
CONSUMER_TIMEOUT_MS = 120_000


class PrivateRabbit:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.node = f"fanflow-faults-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log = directory / "server.log"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _environment(self) -> dict[str, str]:
        config = self.directory / "rabbitmq.conf"
        config.write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            f"consumer_timeout = {CONSUMER_TIMEOUT_MS}\n"
            "log.console = false\n",
            encoding="utf-8",
        )
        plugins = self.directory / "enabled_plugins"
        plugins.write_text("[].\n", encoding="utf-8")
        empty_env = self.directory / "rabbitmq-env.conf"
        empty_env.touch()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.directory),  # the Erlang cookie lives there
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.directory / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.directory / "log"),
            RABBITMQ_CONFIG_FILE=str(config),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins),
            RABBITMQ_CONF_ENV_FILE=str(empty_env),
            RABBITMQ_PID_FILE=str(self.directory / "pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> float:
        """Boot the node (again); seconds until it accepted AMQP connections."""
        if not RABBITMQ_SERVER.exists():
            raise AssertionError(f"{RABBITMQ_SERVER} not found: install Debian's rabbitmq-server")
        if self.alive:
            raise RuntimeError(f"{self.node} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(RABBITMQ_SERVER)],
                env=self._environment(),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as one
            )
        started = time.monotonic()
        while True:
            try:
                wait_accepting(self.port, timeout_s=0.5, what=self.node)
                return time.monotonic() - started
            except AssertionError:
                if not self.alive:
                    raise AssertionError(
                        f"{self.node} exited while booting\n{self.log_tail()}"
                    ) from None
                if time.monotonic() - started > BOOT_TIMEOUT_S:
                    self.kill()
                    raise AssertionError(f"{self.node} not up in {BOOT_TIMEOUT_S} s") from None

    def kill(self) -> None:
        """`kill -9` of the VM (and its helpers): no goodbye to any client."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self.process = None
        wait_refusing(self.port, timeout_s=10, what=self.node)

    def stop(self, *, timeout_s: float = 60) -> None:
        """A clean shutdown (SIGTERM); SIGKILL after timeout_s."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self.process = None

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self._log.read_text(encoding="utf-8", errors="replace")[-size:]
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        try:
            self.stop(timeout_s=30)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
