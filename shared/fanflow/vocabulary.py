"""The words fanflow's runs, events, failures and outbox rows are made of, defined once.

String enums: each member is the string Dify's API and the store use (``RunStatus.FAILED ==
"failed"``), so JSON, the database and clients see plain strings.
"""

from __future__ import annotations

import enum


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    #: succeeded with errors handled by an error strategy
    PARTIAL_SUCCEEDED = "partial-succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


#: a run in one of these has ended; nothing changes it any more
FINISHED_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.PARTIAL_SUCCEEDED, RunStatus.FAILED, RunStatus.STOPPED}
)
#: a run that ended this way counts as a success (`fanflow run` exits 0)
SUCCESS_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.PARTIAL_SUCCEEDED})


class NodeStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: failed, and its error strategy (fail-branch, default-value) took over
    EXCEPTION = "exception"
    #: on a branch not taken
    SKIPPED = "skipped"
    STOPPED = "stopped"


class EventName(enum.StrEnum):
    """Run events, named as in Dify's streaming API."""

    WORKFLOW_STARTED = "workflow_started"
    WORKFLOW_FINISHED = "workflow_finished"
    NODE_STARTED = "node_started"
    NODE_FINISHED = "node_finished"
    NODE_RETRY = "node_retry"
    TEXT_CHUNK = "text_chunk"
    ITERATION_STARTED = "iteration_started"
    ITERATION_NEXT = "iteration_next"
    ITERATION_COMPLETED = "iteration_completed"
    LOOP_STARTED = "loop_started"
    LOOP_NEXT = "loop_next"
    LOOP_COMPLETED = "loop_completed"


class FailureReason(enum.StrEnum):
    """Why a task failed, as `fanflow.retry.on` names it (`TaskResult.reason`)."""

    TIMEOUT = "timeout"
    CONNECT = "connect"
    STATUS_5XX = "status_5xx"
    STATUS_429 = "status_429"
    STATUS_4XX = "status_4xx"
    #: the upstream answered something that is not what was asked for (malformed JSON, ...)
    FORMAT = "format"
    BREAKER_OPEN = "breaker_open"
    SSRF = "ssrf"
    INVALID = "invalid"


class OutboxKind(enum.StrEnum):
    """What an outbox row carries, and so where the relay publishes it."""

    TASK = "task"
    EVENT = "event"
    CONTROL = "control"


class ExitCode(enum.IntEnum):
    """What a fanflow command exits with."""

    OK = 0
    #: the run failed or stopped, or the service could not do what was asked
    FAILED = 1
    #: the input (workflow, inputs, arguments) is invalid
    INVALID = 2
