"""A local mesh for tests: worker and aggregator subprocesses on one namespace and database.

`Cluster` starts `python -m fanflow_services.cli worker|aggregator` processes (kill and restart them
at will), registers apps from YAML files, starts runs the way the trigger does (`RunDriver`
then `OutboxRelay`), and waits for runs to end: on the `workflow_finished` event, with a
store poll as the fallback (events are not persistent; an aggregator crash may delay one).
`close()` terminates the processes, deletes the namespace's topology and closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fanflow.dsl.load import load_workflow
from fanflow.mesh.amqp import AmqpBroker, EventSubscription
from fanflow.mesh.driver import FINISHED, Envelope, RunDriver
from fanflow.mesh.relay import OutboxRelay
from fanflow.mesh.topology import Topology
from fanflow.runtime import RunRequest
from fanflow.scheduler import Limits, StopRequested
from fanflow.store import AppRecord, NodeExecutionRecord, RunRecord, Store

#: what a service logs once it consumes (see services/*/main.py)
_READY = {"worker": "fanflow.worker: serving", "aggregator": "fanflow.aggregator: aggregating"}
_LOG_TAIL_BYTES = 4000


@dataclass
class Service:
    """One worker or aggregator process and its log file."""

    role: str
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self) -> str:
        return f"--- {self.name} (exit {self.process.poll()}) ---\n{self.log()[-_LOG_TAIL_BYTES:]}"


class Cluster:
    """Worker and aggregator processes sharing one namespace and one database.

    Use `await Cluster.open(database_url=..., amqp_url=..., log_dir=...)`, then
    `start_worker()` / `start_aggregator()`; always `await close()`.
    """

    def __init__(
        self,
        *,
        database_url: str,
        amqp_url: str,
        log_dir: Path,
        namespace: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.amqp_url = amqp_url
        self.log_dir = log_dir
        self.namespace = namespace or f"fanflow-mesh-{uuid.uuid4().hex[:10]}"
        self.topology = Topology(namespace=self.namespace)
        #: the deployment's result key (fanflow.mesh.signing): its workers and aggregators
        self.result_key = secrets.token_hex(32)
        self.env = dict(env or {})
        self.services: list[Service] = []
        self.store: Store | None = None
        self.broker: AmqpBroker | None = None
        self.driver: RunDriver | None = None
        self.relay: OutboxRelay | None = None
        self._events: EventSubscription | None = None
        self._listener: asyncio.Task[None] | None = None
        self._finished: dict[str, asyncio.Event] = {}
        self._recorded: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self._counter = 0

    @classmethod
    async def open(cls, **options: Any) -> Cluster:
        cluster = cls(**options)
        try:
            await cluster._connect()
        except BaseException:
            await cluster.close()
            raise
        return cluster

    async def _connect(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.store = await Store.open(self.database_url)
        self.broker = AmqpBroker(self.amqp_url, topology=self.topology, connection_name="tests")
        await self.broker.connect()
        await self.broker.declare()
        self.driver = RunDriver(self.store, self.topology, limits=Limits())
        self.relay = OutboxRelay(self.store, self.broker)
        self._events = await self.broker.subscribe_events("run.*.workflow_finished")
        self._listener = asyncio.create_task(self._listen(self._events))

    # ---- processes -----------------------------------------------------------------------

    def _environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FANFLOW_")}
        env.update(
            FANFLOW_DATABASE_URL=self.database_url,
            FANFLOW_AMQP_URL=self.amqp_url,
            FANFLOW_NAMESPACE=self.namespace,
            # a test's teardown should not wait 30 s for a task left sleeping
            FANFLOW_DRAIN_TIMEOUT_S="5",
            FANFLOW_RESULT_KEY=self.result_key,
        )
        env.update(self.env)
        env.update(extra)
        return env

    def _spawn(self, role: str, extra_env: Mapping[str, str]) -> Service:
        self._counter += 1
        name = f"{role}-{self._counter}"
        log_path = self.log_dir / f"{self.namespace}-{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "fanflow_services.cli", role],
                env=self._environment(extra_env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        service = Service(role, name, process, log_path)
        self.services.append(service)
        return service

    def start_worker(self, **extra_env: str) -> Service:
        """A worker process (env overrides as FANFLOW_* keyword arguments)."""
        return self._spawn("worker", extra_env)

    def start_aggregator(self, **extra_env: str) -> Service:
        return self._spawn("aggregator", extra_env)

    async def wait_ready(self, *services: Service, timeout_s: float = 30) -> None:
        """Until each service logged that it consumes; fails fast when one exits."""
        deadline = time.monotonic() + timeout_s
        pending = list(services or self.services)
        while pending:
            for service in list(pending):
                if _READY[service.role] in service.log():
                    pending.remove(service)
                elif not service.alive:
                    raise AssertionError(f"{service.name} exited while starting\n{service.tail()}")
            if pending and time.monotonic() > deadline:
                raise AssertionError(
                    f"not ready after {timeout_s} s: {[s.name for s in pending]}\n"
                    + "\n".join(s.tail() for s in pending)
                )
            await asyncio.sleep(0.05)

    @staticmethod
    def kill(service: Service) -> None:
        """SIGKILL: no drain, no goodbye (its unacked deliveries return to their queues)."""
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(10)

    async def stop_services(self, *, timeout_s: float = 15) -> None:
        """SIGTERM every live process (they drain), SIGKILL what is left after timeout_s."""
        for service in self.services:
            if service.alive:
                service.process.terminate()
        deadline = time.monotonic() + timeout_s
        while any(s.alive for s in self.services) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for service in self.services:
            if service.alive:
                service.process.kill()
            service.process.wait(10)

    def logs(self) -> str:
        return "\n".join(service.tail() for service in self.services)

    # ---- apps and runs -------------------------------------------------------------------

    async def register(self, path: Path) -> AppRecord:
        """Register the workflow file as an app (its text as given)."""
        store = self._require(self.store)
        workflow = load_workflow(path)
        app_id = await store.create_app(path.stem, workflow.mode, path.read_text(encoding="utf-8"))
        app = await store.get_app(app_id)
        assert app is not None
        return app

    async def start_run(
        self,
        app: AppRecord,
        inputs: Mapping[str, Any] | None = None,
        *,
        query: str | None = None,
        record_events: bool = False,
    ) -> str:
        """Create the run and publish its first fan-out, as the trigger does; its id.

        With record_events, every event of the run is kept (`events(run_id)`).
        """
        driver, relay = self._require(self.driver), self._require(self.relay)
        run_id = str(uuid.uuid4())
        self._finished[run_id] = asyncio.Event()
        if record_events:
            self._recorded[run_id] = []
            await self._require(self._events).bind(run_id)
        ids = await driver.start_run(
            app, run_id, RunRequest(inputs=dict(inputs or {}), query=query)
        )
        await relay.publish(ids)
        return run_id

    async def stop_run(self, app: AppRecord, run_id: str) -> None:
        """Ask the run to stop, as the trigger's stop endpoint does."""
        driver, relay = self._require(self.driver), self._require(self.relay)
        await relay.publish(await driver.apply(app, run_id, [Envelope(StopRequested())]))

    async def wait(self, run_id: str, *, timeout_s: float = 60) -> RunRecord:
        """The run once finished; AssertionError with the services' logs on timeout."""
        store = self._require(self.store)
        finished = self._finished.setdefault(run_id, asyncio.Event())
        deadline = time.monotonic() + timeout_s
        while True:
            run = await store.get_run(run_id)
            if run is not None and run.status in FINISHED:
                return run
            left = deadline - time.monotonic()
            if left <= 0:
                status = None if run is None else run.status
                raise AssertionError(
                    f"run {run_id} still {status} after {timeout_s} s\n{self.logs()}"
                )
            # the event normally ends the wait; the poll covers an event lost to a crash
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), min(left, 0.5))

    async def node_executions(self, run_id: str) -> list[NodeExecutionRecord]:
        return await self._require(self.store).list_node_executions(run_id)

    def events(self, run_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(event name, payload) of a run started with record_events, in arrival order."""
        return list(self._recorded[run_id])

    async def _listen(self, events: EventSubscription) -> None:
        async for event in events:
            recorded = self._recorded.get(event.run_id)
            if recorded is not None:
                recorded.append((event.name, event.payload))
            if event.name == "workflow_finished":
                self._finished.setdefault(event.run_id, asyncio.Event()).set()

    # ---- teardown ------------------------------------------------------------------------

    async def close(self) -> None:
        """Terminate the processes, delete the topology, close broker and store."""
        try:
            await self.stop_services()
        finally:
            try:
                await self._close_broker()
            finally:
                if self.store is not None:
                    await self.store.close()

    async def _close_broker(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._events is not None:
            await self._events.close()
        if self.broker is not None:
            try:
                await self.broker.delete_topology()
            finally:
                await self.broker.close()

    @staticmethod
    def _require(thing: Any) -> Any:
        if thing is None:
            raise RuntimeError("the cluster is not open: use `await Cluster.open(...)`")
        return thing
