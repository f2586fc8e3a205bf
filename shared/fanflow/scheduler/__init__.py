"""The pure scheduler and its protocol."""

from fanflow.scheduler.protocol import (
    CancelTask,
    CancelTasks,
    CollectItems,
    Command,
    DispatchTask,
    Emit,
    Event,
    ItemOutcome,
    ItemsCollected,
    RecordItem,
    RunFinished,
    StartTimer,
    StopRequested,
    TaskFinished,
    TimerFired,
)
from fanflow.scheduler.scheduler import Limits, Scheduler
from fanflow.scheduler.state import RunState, dump_state, load_state

__all__ = [
    "CancelTask",
    "CancelTasks",
    "CollectItems",
    "Command",
    "DispatchTask",
    "Emit",
    "Event",
    "ItemOutcome",
    "ItemsCollected",
    "Limits",
    "RecordItem",
    "RunFinished",
    "RunState",
    "Scheduler",
    "StartTimer",
    "StopRequested",
    "TaskFinished",
    "TimerFired",
    "dump_state",
    "load_state",
]
