"""The worker's logic: node tasks in, executed, results out; stop broadcasts honoured.

Holds no database connection: a task carries everything it needs. A task of a run that a
stop broadcast named is dropped (queued) or cancelled (running). Each result is signed with
the deployment's `ResultKey` (`fanflow.mesh.signing`; None: unsigned, which the services
allow only with FANFLOW_INSECURE_UNSIGNED_RESULTS). A result that cannot be encoded (outputs
JSON cannot carry: a lone surrogate, bytes that are not UTF-8, an unknown type) is replaced
by a failure of its node at once, so the task is not redelivered and the code not run
again. Works over either broker (`AmqpBroker`, `MemoryBroker`); the service only wires it
up (pools, sandbox, signals).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from fanflow.mesh.signing import ResultKey
from fanflow.mesh.topology import HEADER_READY_AT, Topology
from fanflow.mesh.transport import Broker, Disposition
from fanflow.messages import NodeTask, TaskResult
from fanflow.metrics import NODE_DURATION, NODE_EXECUTIONS, QUEUE_WAIT, TASKS_IN_FLIGHT

log = logging.getLogger("fanflow.worker")
#: how many stopped run ids a worker remembers (stop broadcasts are not replayed)
STOPPED_RUNS_REMEMBERED = 10_000

Execute = Callable[[NodeTask], Coroutine[Any, Any, TaskResult]]


@dataclass
class Worker:
    """Runs the tasks `broker` delivers with `execute` and publishes their results.

    `result_key` signs every result (None: unsigned); `duplicate_results` publishes every
    result twice (fault injection for tests).
    """

    broker: Broker
    execute: Execute
    topology: Topology
    result_key: ResultKey | None = None
    duplicate_results: bool = False
    #: stopped run -> its redrive count then: tasks of a later redrive still run
    _stopped: OrderedDict[str, int] = field(default_factory=OrderedDict, init=False)
    _running: dict[str, set[asyncio.Task[TaskResult]]] = field(default_factory=dict, init=False)
    _generations: dict[asyncio.Task[TaskResult], int] = field(default_factory=dict, init=False)
    #: tasks cancelled one by one (lost races), most recent last; and running ones by id
    _cancelled: OrderedDict[str, None] = field(default_factory=OrderedDict, init=False)
    _by_task_id: dict[str, asyncio.Task[TaskResult]] = field(default_factory=dict, init=False)

    async def start(self, prefetch: Mapping[str, int]) -> asyncio.Task[None]:
        """Listen to stop broadcasts, then consume each class's queue with its prefetch;
        returns the listener (cancel it when stopping)."""
        control = await self.broker.subscribe_control()
        listener = asyncio.create_task(self.listen(control))
        for cls, count in prefetch.items():
            await self.broker.consume(self.topology.task_queue(cls), self.handle, prefetch=count)
        return listener

    async def listen(self, control: AsyncIterator[dict[str, Any]]) -> None:
        async for message in control:
            run_id = message.get("stop_run")
            generation = message.get("generation", 0)
            if isinstance(run_id, str):
                self.stop_run(run_id, generation if isinstance(generation, int) else 0)
            task_ids = message.get("cancel_tasks")
            if isinstance(task_ids, list):
                self.cancel_tasks([t for t in task_ids if isinstance(t, str)])

    def cancel_tasks(self, task_ids: list[str]) -> None:
        """Drop these tasks if queued, cancel them if running (a lost race)."""
        for task_id in task_ids:
            self._cancelled[task_id] = None
            self._cancelled.move_to_end(task_id)
            running = self._by_task_id.get(task_id)
            if running is not None:
                running.cancel()
        while len(self._cancelled) > STOPPED_RUNS_REMEMBERED:
            self._cancelled.popitem(last=False)

    def stop_run(self, run_id: str, generation: int = 0) -> None:
        """Drop the run's queued tasks from now on and cancel its running ones (of its
        attempts up to redrive number `generation`)."""
        self._stopped[run_id] = max(generation, self._stopped.get(run_id, 0))
        self._stopped.move_to_end(run_id)
        while len(self._stopped) > STOPPED_RUNS_REMEMBERED:
            self._stopped.popitem(last=False)
        for running in list(self._running.get(run_id, ())):
            if self._generations.get(running, 0) <= self._stopped[run_id]:
                running.cancel()

    def _is_stopped(self, task: NodeTask) -> bool:
        if task.task_id in self._cancelled:
            return True
        stopped = self._stopped.get(task.run_id)
        return stopped is not None and task.generation <= stopped

    async def handle(self, body: bytes, headers: dict[str, Any], redelivered: bool) -> Disposition:
        task = NodeTask.decode(body)
        if self._is_stopped(task):
            return Disposition.ACK  # the run is over; nobody waits for this result
        cls = self.topology.class_for(task.node_type)
        _observe_queue_wait(cls, headers)
        execution = asyncio.create_task(self.execute(task))
        self._running.setdefault(task.run_id, set()).add(execution)
        self._generations[execution] = task.generation
        self._by_task_id[task.task_id] = execution
        TASKS_IN_FLIGHT.labels(cls).inc()
        started = time.monotonic()
        try:
            result = await execution
        except asyncio.CancelledError:
            if self._is_stopped(task):
                log.info("task %s cancelled: run %s stopped", task.task_id, task.run_id)
                return Disposition.ACK
            raise
        finally:
            TASKS_IN_FLIGHT.labels(cls).dec()
            self._generations.pop(execution, None)
            self._by_task_id.pop(task.task_id, None)
            running = self._running.get(task.run_id)
            if running is not None:
                running.discard(execution)
                if not running:
                    del self._running[task.run_id]
        NODE_DURATION.labels(task.node_type).observe(time.monotonic() - started)
        result, body = encode_result(task, result)
        NODE_EXECUTIONS.labels(task.node_type, result.status).inc()
        signature = self.result_key.headers(body) if self.result_key is not None else None
        for _ in range(2 if self.duplicate_results else 1):
            await self.broker.publish_result(result, body=body, signature=signature)
        return Disposition.ACK


#: the error type of a result replaced because it could not be encoded
UNENCODABLE_RESULT = "UnencodableResult"


def encode_result(task: NodeTask, result: TaskResult) -> tuple[TaskResult, bytes]:
    """The result and its encoding; a result JSON cannot carry becomes a failure of the
    node naming why (final: running the code again would give the same outputs)."""
    try:
        return result, result.encode()
    except ValueError as exc:  # pydantic's PydanticSerializationError is a ValueError
        reason = str(exc).splitlines()[0][:300]
        log.warning("task %s: its result cannot be encoded (%s); failing the node", task.task_id,
                    reason)  # fmt: skip
        failure = task.failed(
            f"{task.node_id} ({task.node_title}): its {result.status} result cannot be sent: "
            f"the outputs hold a value JSON cannot carry ({reason}); expected JSON values "
            "(strings of valid Unicode, numbers, booleans, null, lists, objects)",
            error_type=UNENCODABLE_RESULT,
            retryable=False,
            elapsed_s=result.elapsed_s,
        )
        return failure, failure.encode()


def _observe_queue_wait(cls: str, headers: dict[str, Any]) -> None:
    try:
        ready_at = float(headers.get(HEADER_READY_AT, ""))
    except (TypeError, ValueError):
        return  # published by something else than the driver
    QUEUE_WAIT.labels(cls).observe(max(0.0, time.time() - ready_at))
