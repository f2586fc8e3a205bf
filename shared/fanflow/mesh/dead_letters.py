"""What the aggregator does with dead letters: tasks and results the broker gave up on.

A dead task fails its node (and so its run, or its error branch). A dead result is applied
once more (its message id is the original one, so a copy applied meanwhile changes
nothing); if it still fails for its content, its node fails with an error saying so.
Neither is ever requeued: the dead-letter queues have a delivery limit and nowhere to
dead-letter to. A dead task whose failure cannot be applied (for another reason than the
database, which holds the batch) is published again at the end of its queue after a
pause — retried later, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from fanflow.errors import DecodeError
from fanflow.mesh.driver import Envelope
from fanflow.mesh.signing import ResultKey, rejected
from fanflow.mesh.topology import Topology
from fanflow.mesh.transport import Broker, Delivery, Disposition, Publish
from fanflow.messages import NodeTask, TaskResult
from fanflow.metrics import DEAD_LETTERS
from fanflow.scheduler import TaskFinished

log = logging.getLogger("fanflow.aggregator")
#: a dead-lettered task's failure type (`TaskResult.error_type`)
DEAD_LETTERED = "DeadLettered"
#: a header counting how often a dead task that failed to apply was put back
HEADER_DEAD_RETRIES = "fanflow-dead-retries"
#: how often the broker delivered a dead task before dead-lettering it, kept when put back
#: (the put-back copy has no x-death, and the dead queue counts its own deliveries)
HEADER_DEAD_DELIVERIES = "fanflow-dead-deliveries"


def deliveries_before_death(headers: Mapping[str, Any], *, delivery_limit: int) -> int | None:
    """How often the broker delivered a dead task before dead-lettering it, or None when
    the headers do not tell (a worker rejected it).

    The dead queue's own x-delivery-count restarts at 0, and RabbitMQ keeps no count in
    x-death; but a task dead-lettered for reason ``delivery_limit`` was delivered exactly
    the first time plus `delivery_limit` redeliveries (both brokers agree).
    """
    carried = headers.get(HEADER_DEAD_DELIVERIES)
    if isinstance(carried, int) and carried > 0:
        return carried
    deaths = headers.get("x-death")
    if (
        isinstance(deaths, list)
        and deaths
        and isinstance(deaths[0], Mapping)
        and deaths[0].get("reason") == "delivery_limit"
    ):
        return delivery_limit + 1
    return None


class Applier(Protocol):
    async def apply_grouped(
        self, envelopes: Sequence[tuple[str, Envelope] | None], *, source: str
    ) -> list[Disposition]: ...


def dead_task_failure(task: NodeTask, *, deliveries: int | None) -> TaskResult:
    """The result of a task the broker gave up on after `deliveries` deliveries (None: a
    worker rejected it)."""
    why = (
        f"after {deliveries} deliveries (each time its worker crashed or failed before settling it)"
        if deliveries is not None
        else "(a worker rejected it as undecodable)"
    )
    return task.failed(
        f"{task.node_id} ({task.node_title}): the task was dead-lettered {why}",
        error_type=DEAD_LETTERED,
        retryable=False,
    )


def unapplicable_failure(result: TaskResult) -> TaskResult:
    """The failure that replaces a result that could not be applied to its run."""
    return result.model_copy(
        update={
            "status": "failed",
            "outputs": {},
            "error": f"{result.node_id}: its result could not be applied to the run "
            "(dead-lettered after repeated failures; see the aggregator log)",
            "error_type": "ResultNotApplicable",
            "retryable": False,
        }
    )


class DeadLetters:
    """The handlers of the dead-task and dead-result queues, applying through `applier`."""

    def __init__(
        self,
        applier: Applier,
        broker: Broker,
        topology: Topology,
        *,
        pause_s: float,
        result_key: ResultKey | None = None,
    ) -> None:
        self.applier = applier
        #: dead results must be signed too: the dead-letter exchange is reachable as well
        self.result_key = result_key
        self.broker = broker
        self.topology = topology
        self.pause_s = pause_s

    async def handle_tasks(self, deliveries: Sequence[Delivery]) -> list[Disposition]:
        source = "dead_tasks"  # the metrics' label
        envelopes: list[tuple[str, Envelope] | None] = []
        for delivery in deliveries:
            try:
                task = NodeTask.decode(delivery.body)
            except DecodeError:
                log.error("dropping an undecodable dead-lettered task %s", delivery.message_id)
                DEAD_LETTERS.labels(source, "undecodable").inc()
                envelopes.append(None)
                continue
            delivered = deliveries_before_death(
                delivery.headers, delivery_limit=self.topology.delivery_limit
            )
            failure = dead_task_failure(task, deliveries=delivered)
            envelopes.append((task.run_id, Envelope(TaskFinished(failure), f"dead:{task.task_id}")))
        dispositions = await self.applier.apply_grouped(envelopes, source=source)
        settled = []
        for delivery, item, disposition in zip(deliveries, envelopes, dispositions, strict=True):
            if item is None:  # undecodable: nowhere else to go, acknowledged (logged above)
                settled.append(Disposition.ACK)
            elif disposition is Disposition.REQUEUE:
                settled.append(await self._put_back(delivery))
            else:
                DEAD_LETTERS.labels(source, "failed_node").inc()
                settled.append(disposition)
        return settled

    async def _put_back(self, delivery: Delivery) -> Disposition:
        """Publish a dead task again at the end of its queue (a fresh delivery count), then
        acknowledge this delivery; requeue it when the broker will not take it."""
        await asyncio.sleep(self.pause_s)
        retries = int(delivery.headers.get(HEADER_DEAD_RETRIES, 0) or 0) + 1
        headers = {k: v for k, v in delivery.headers.items() if not k.startswith("x-")}
        deliveries = deliveries_before_death(
            delivery.headers, delivery_limit=self.topology.delivery_limit
        )
        if deliveries is not None:
            headers[HEADER_DEAD_DELIVERIES] = deliveries
        again = Publish(
            "",
            self.topology.dead_tasks_queue,
            delivery.body,
            message_id=delivery.message_id,
            headers={**headers, HEADER_DEAD_RETRIES: retries},
        )
        [error] = await self.broker.publish_many([again])
        if error is not None:
            log.warning("could not put dead task %s back: %r", delivery.message_id, error)
            return Disposition.REQUEUE
        DEAD_LETTERS.labels("dead_tasks", "retried_later").inc()
        log.error(
            "dead task %s could not fail its node (try %d); put back for later",
            delivery.message_id,
            retries,
        )
        return Disposition.ACK

    async def handle_results(self, deliveries: Sequence[Delivery]) -> list[Disposition]:
        source = "dead_results"  # the metrics' label
        results: list[TaskResult | None] = []
        for delivery in deliveries:
            if rejected(self.result_key, delivery, queue=source):
                results.append(None)  # logged and counted; acknowledged below
                continue
            try:
                results.append(TaskResult.decode(delivery.body))
            except DecodeError:
                log.error("dropping an undecodable dead-lettered result %s", delivery.message_id)
                DEAD_LETTERS.labels(source, "undecodable").inc()
                results.append(None)
        envelopes: list[tuple[str, Envelope] | None] = []
        for delivery, result in zip(deliveries, results, strict=True):
            if result is None:
                envelopes.append(None)
                continue
            message_id = delivery.message_id or self.topology.result_message_id(result.task_id)
            envelopes.append((result.run_id, Envelope(TaskFinished(result), message_id)))
        first = await self.applier.apply_grouped(envelopes, source=source)
        failures: list[tuple[str, Envelope] | None] = []
        for result, disposition in zip(results, first, strict=True):
            if result is None or disposition is not Disposition.REQUEUE:
                if result is not None:
                    DEAD_LETTERS.labels(source, "applied").inc()
                failures.append(None)
                continue
            failed = unapplicable_failure(result)
            failures.append(
                (result.run_id, Envelope(TaskFinished(failed), f"dead-result:{result.task_id}"))
            )
        second = await self.applier.apply_grouped(failures, source=source)
        for item, disposition in zip(failures, second, strict=True):
            if item is None:
                continue
            if disposition is Disposition.REQUEUE:
                log.error(
                    "dead result for run %s: neither it nor its failure applies; dropped", item[0]
                )
                DEAD_LETTERS.labels(source, "dropped").inc()
            else:
                DEAD_LETTERS.labels(source, "failed_node").inc()
        return [Disposition.ACK] * len(deliveries)
