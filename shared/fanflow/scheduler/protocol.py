"""What goes into the scheduler (events) and what comes out (commands)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fanflow.messages import NodeTask, TaskResult

# ---- events -------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskFinished:
    result: TaskResult


@dataclass(frozen=True)
class ItemOutcome:
    index: int
    value: Any = None
    removed: bool = False


@dataclass(frozen=True)
class ItemsCollected:
    """The shell's answer to `CollectItems`: every recorded item, ordered by index."""

    iteration: str
    outcomes: tuple[ItemOutcome, ...]


@dataclass(frozen=True)
class TimerFired:
    name: str


@dataclass(frozen=True)
class StopRequested:
    reason: str = "stopped by user"


Event = TaskFinished | ItemsCollected | TimerFired | StopRequested

# ---- commands -----------------------------------------------------------------------


@dataclass(frozen=True)
class DispatchTask:
    """Run a task node; `delay_ms` > 0 for a retry (the shell schedules it, nobody sleeps)."""

    task: NodeTask
    delay_ms: int = 0


@dataclass(frozen=True)
class RecordItem:
    """Store one iteration item's result outside the run state."""

    iteration: str
    index: int
    value: Any = None
    removed: bool = False


@dataclass(frozen=True)
class CollectItems:
    """Load every recorded item of `iteration` and answer with `ItemsCollected`."""

    iteration: str
    count: int


@dataclass(frozen=True)
class StartTimer:
    name: str
    delay_ms: int


@dataclass(frozen=True)
class CancelTasks:
    """Tell workers to drop this run's queued and running tasks (stop, failure, limits)."""

    run_id: str


@dataclass(frozen=True)
class CancelTask:
    """Tell workers to drop these tasks of a run, queued or running (a lost race)."""

    run_id: str
    task_ids: tuple[str, ...]


@dataclass(frozen=True)
class Emit:
    """A progress event for streams and logs (Dify's SSE event names)."""

    event: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunFinished:
    status: str
    outputs: dict[str, Any]
    error: str | None = None


Command = (
    DispatchTask
    | RecordItem
    | CollectItems
    | StartTimer
    | CancelTasks
    | CancelTask
    | Emit
    | RunFinished
)

DEADLINE_TIMER = "deadline"
