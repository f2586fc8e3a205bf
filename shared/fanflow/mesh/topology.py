"""Names and declarations of every exchange and queue fanflow uses on RabbitMQ.

Pure data: this module computes names, routes, arguments and headers; `fanflow.mesh.amqp` is the
only module that turns them into AMQP calls. Everything is prefixed by a namespace so
several deployments (and tests) can share one virtual host.

The shape:

- ``{ns}.tasks`` (direct): routing key = node class; one quorum queue ``{ns}.tasks.{class}``
  per class, with a delivery limit and dead-lettering (at-least-once) to ``{ns}.dlx``.
- ``{ns}.results`` (quorum queue), same limits, published through ``{ns}.results.in``
  (direct, key ``results``): workers need write permission on that exchange only, not on
  the default exchange, which reaches every queue (deploy/rabbitmq: per-service users).
- ``{ns}.dlx`` (direct): key ``tasks`` → ``{ns}.dead.tasks``, key ``results`` →
  ``{ns}.dead.results``. The aggregator turns each dead task into a failed TaskResult: the
  body is the task itself, its class and run are in the ``fanflow-*`` headers and the
  broker's ``x-death`` header keeps the original exchange, routing key and reason.
- ``{ns}.delay.{class}.{ms}`` (classic queues, one per class and delay): ``x-message-ttl``
  = ms, then dead-lettered to ``{ns}.tasks`` with routing key = class. Redeclared on every
  delayed publish, which renews their ``x-expires`` lease, so unused ones vanish.
- ``{ns}.events`` (topic): ``run.{run_id}.{event}`` for SSE streams and blocking waiters.
- ``{ns}.control`` (fanout): broadcasts to every worker (stop a run, later cancel a race).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from fanflow import defaults
from fanflow.messages import NodeTask, TaskResult
from fanflow.registry import QUEUE_CLASSES

#: node type -> worker class, as `fanflow.registry` declares them
DEFAULT_NODE_CLASSES: Mapping[str, str] = QUEUE_CLASSES

DEFAULT_DELIVERY_LIMIT = defaults.DELIVERY_LIMIT
#: how long a delay queue outlives its last delayed publish; a constant on purpose: queue
#: arguments cannot change on redeclare, so every process must compute the same value
DELAY_QUEUE_IDLE_MS = 60_000
#: a delay longer than this belongs to a scheduler deadline, not to a queue TTL
MAX_DELAY_MS = defaults.MAX_DELAY_MS

DLX_KEY_TASKS = "tasks"
DLX_KEY_RESULTS = "results"
#: the routing key of results on the results exchange
RESULTS_KEY = "results"

#: headers set on every task, kept through dead-lettering (the broker only appends x-death)
HEADER_KIND = "fanflow-kind"
HEADER_CLASS = "fanflow-class"
HEADER_RUN_ID = "fanflow-run-id"
HEADER_TASK_ID = "fanflow-task-id"
#: epoch seconds from which a task may run (its commit plus any retry delay): queue wait
HEADER_READY_AT = "fanflow-ready-at"

_RESERVED_IN_KEYS = (".", "*", "#")

ExchangeType = Literal["direct", "topic", "fanout"]


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    type: ExchangeType
    durable: bool = True


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict, hash=False)
    durable: bool = True


@dataclass(frozen=True)
class BindingSpec:
    queue: str
    exchange: str
    routing_key: str


@dataclass(frozen=True)
class Route:
    """Where a message goes: exchange ("" is the default exchange) and routing key."""

    exchange: str
    routing_key: str


class _Name:
    """A name of the deployment's namespace, read as an attribute: ``<namespace>.<suffix>``."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    def __get__(self, topology: Topology, owner: type[Topology]) -> str:
        return f"{topology.namespace}.{self.suffix}"


@dataclass(frozen=True)
class Topology:
    """Every name fanflow declares on the broker, from a namespace and the node classes.

    ``node_classes`` maps a node type (``http-request``) to its worker class (``http``);
    each class gets one task queue. Changing ``delivery_limit`` for existing queues needs
    the queues deleted (or a broker policy): RabbitMQ refuses a redeclare with other
    arguments.
    """

    namespace: str = "fanflow"
    node_classes: Mapping[str, str] = field(
        default_factory=lambda: DEFAULT_NODE_CLASSES, hash=False
    )
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT

    def __post_init__(self) -> None:
        if not self.namespace or self.namespace.startswith("amq."):
            raise ValueError(
                f"namespace must be non-empty and not start with 'amq.': {self.namespace!r}"
            )
        if self.delivery_limit < 0:
            raise ValueError(f"delivery_limit must be >= 0, got {self.delivery_limit}")
        for node_type, cls in self.node_classes.items():
            if not cls or any(c in cls for c in (*_RESERVED_IN_KEYS, " ")):
                raise ValueError(f"node class {cls!r} of {node_type!r} must be a plain word")
        object.__setattr__(self, "node_classes", MappingProxyType(dict(self.node_classes)))

    # -- names ---------------------------------------------------------------------------

    @property
    def classes(self) -> tuple[str, ...]:
        """The worker classes, sorted, each once."""
        return tuple(sorted(set(self.node_classes.values())))

    tasks_exchange = _Name("tasks")
    results_queue = _Name("results")
    results_exchange = _Name("results.in")
    events_exchange = _Name("events")
    control_exchange = _Name("control")
    dead_letter_exchange = _Name("dlx")
    dead_tasks_queue = _Name("dead.tasks")
    dead_results_queue = _Name("dead.results")

    def class_for(self, node_type: str) -> str:
        """The worker class serving a node type (KeyError names the known types)."""
        try:
            return self.node_classes[node_type]
        except KeyError:
            known = ", ".join(sorted(self.node_classes))
            raise KeyError(
                f"no worker class for node type {node_type!r} (known: {known})"
            ) from None

    def task_queue(self, cls: str) -> str:
        return f"{self.namespace}.tasks.{cls}"

    def delay_queue(self, cls: str, delay_ms: int) -> str:
        return f"{self.namespace}.delay.{cls}.{_check_delay(delay_ms)}"

    # -- routes, ids and headers -----------------------------------------------------------

    def task_route(self, node_type: str) -> Route:
        return Route(self.tasks_exchange, self.class_for(node_type))

    def result_route(self) -> Route:
        return Route(self.results_exchange, RESULTS_KEY)

    def event_route(self, run_id: str, event: str) -> Route:
        return Route(self.events_exchange, f"run.{_word(run_id, 'run_id')}.{_word(event, 'event')}")

    def control_route(self) -> Route:
        return Route(self.control_exchange, "")

    def event_pattern(self, run_id: str) -> str:
        """Topic binding that matches every event of one run."""
        return f"run.{_word(run_id, 'run_id')}.*"

    @staticmethod
    def parse_event_key(routing_key: str) -> tuple[str, str]:
        """(run_id, event) of an events routing key; ValueError when not of that form."""
        parts = routing_key.split(".")
        if len(parts) != 3 or parts[0] != "run":
            raise ValueError(f"not an event routing key (run.<run_id>.<event>): {routing_key!r}")
        return parts[1], parts[2]

    @staticmethod
    def task_message_id(task: NodeTask) -> str:
        return task.task_id

    @staticmethod
    def result_message_id(task_id: str) -> str:
        return f"result:{task_id}"

    def task_headers(self, task: NodeTask) -> dict[str, str]:
        """Routing facts kept in headers so a dead-lettered task can still fail its node."""
        return {
            HEADER_KIND: "task",
            HEADER_CLASS: self.class_for(task.node_type),
            HEADER_RUN_ID: task.run_id,
            HEADER_TASK_ID: task.task_id,
        }

    @staticmethod
    def result_headers(result: TaskResult) -> dict[str, str]:
        return {HEADER_KIND: "result", HEADER_RUN_ID: result.run_id, HEADER_TASK_ID: result.task_id}

    # -- declarations -------------------------------------------------------------------

    def exchanges(self) -> tuple[ExchangeSpec, ...]:
        return (
            ExchangeSpec(self.tasks_exchange, "direct"),
            ExchangeSpec(self.events_exchange, "topic"),
            ExchangeSpec(self.control_exchange, "fanout"),
            ExchangeSpec(self.dead_letter_exchange, "direct"),
            ExchangeSpec(self.results_exchange, "direct"),
        )

    def queues(self) -> tuple[QueueSpec, ...]:
        """The durable queues; dead-letter queues come first so their route exists before
        anything can be dead-lettered into it."""
        return (
            QueueSpec(self.dead_tasks_queue, self._quorum(dead_letter_key=None)),
            QueueSpec(self.dead_results_queue, self._quorum(dead_letter_key=None)),
            *(QueueSpec(self.task_queue(c), self._quorum(DLX_KEY_TASKS)) for c in self.classes),
            QueueSpec(self.results_queue, self._quorum(DLX_KEY_RESULTS)),
        )

    def bindings(self) -> tuple[BindingSpec, ...]:
        dlx = self.dead_letter_exchange
        return (
            BindingSpec(self.dead_tasks_queue, dlx, DLX_KEY_TASKS),
            BindingSpec(self.dead_results_queue, dlx, DLX_KEY_RESULTS),
            *(BindingSpec(self.task_queue(c), self.tasks_exchange, c) for c in self.classes),
            BindingSpec(self.results_queue, self.results_exchange, RESULTS_KEY),
        )

    def delay_queue_spec(self, cls: str, delay_ms: int) -> QueueSpec:
        """A classic queue holding tasks of one class for `delay_ms`, then routing them to
        the tasks exchange. It expires DELAY_QUEUE_IDLE_MS after its last redeclare."""
        if cls not in self.classes:
            raise KeyError(f"unknown worker class {cls!r} (known: {', '.join(self.classes)})")
        delay_ms = _check_delay(delay_ms)
        return QueueSpec(
            self.delay_queue(cls, delay_ms),
            {
                "x-queue-type": "classic",
                "x-message-ttl": delay_ms,
                "x-dead-letter-exchange": self.tasks_exchange,
                "x-dead-letter-routing-key": cls,
                "x-expires": delay_ms + DELAY_QUEUE_IDLE_MS,
            },
        )

    def _quorum(self, dead_letter_key: str | None) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
        }
        if dead_letter_key is not None:
            # at-least-once dead-lettering (RabbitMQ >= 3.10) requires reject-publish overflow
            arguments |= {
                "x-dead-letter-exchange": self.dead_letter_exchange,
                "x-dead-letter-routing-key": dead_letter_key,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        return arguments


def _check_delay(delay_ms: int) -> int:
    if not isinstance(delay_ms, int) or not 0 < delay_ms <= MAX_DELAY_MS:
        raise ValueError(f"delay_ms must be an int in 1..{MAX_DELAY_MS}, got {delay_ms!r}")
    return delay_ms


def _word(value: str, what: str) -> str:
    if not value or any(c in value for c in _RESERVED_IN_KEYS):
        raise ValueError(f"{what} must be non-empty without '.', '*' or '#': {value!r}")
    return value
