"""The shell kernel: what every shell of the pure scheduler does the same way.

The embedded runner (`fanflow.runner`), the mesh driver (`fanflow.mesh.driver`) and the
tests' simulated transport start a run with `start_run` and keep iteration items outside
the run state in an `ItemStore`: `MemoryItems` in one process, the run's transaction
(`fanflow.store.RunTransaction`) on the mesh. `settle_items` records the items a step
produced and answers its `CollectItems` from the store, so a shell is left with the
commands that really need it (dispatch, emit, timers, cancel, finish).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from fanflow.runtime import RunSetup
from fanflow.scheduler import (
    CollectItems,
    Command,
    ItemOutcome,
    ItemsCollected,
    RecordItem,
    RunState,
    Scheduler,
)


class StoredItemLike(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def value(self) -> Any: ...
    @property
    def removed(self) -> bool: ...


class ItemStore(Protocol):
    """Where a run's iteration items wait until their iteration collects them."""

    async def record_item(
        self, iteration: str, index: int, value: Any = None, removed: bool = False
    ) -> None: ...

    async def collect_items(self, iteration: str) -> Sequence[StoredItemLike]:
        """Every recorded item of `iteration`, ordered by index, removed from the store."""
        ...


class MemoryItems:
    """An `ItemStore` in this process's memory (also usable without an event loop)."""

    def __init__(self) -> None:
        self._items: dict[str, dict[int, ItemOutcome]] = {}

    def record(self, command: RecordItem) -> None:
        self._items.setdefault(command.iteration, {})[command.index] = ItemOutcome(
            command.index, command.value, command.removed
        )

    def collect(self, iteration: str) -> tuple[ItemOutcome, ...]:
        recorded = self._items.pop(iteration, {})
        return tuple(recorded[i] for i in sorted(recorded))

    async def record_item(
        self, iteration: str, index: int, value: Any = None, removed: bool = False
    ) -> None:
        self.record(RecordItem(iteration, index, value, removed))

    async def collect_items(self, iteration: str) -> tuple[ItemOutcome, ...]:
        return self.collect(iteration)


def start_run(scheduler: Scheduler, run_id: str, setup: RunSetup) -> tuple[RunState, list[Command]]:
    """The run's first step, from what `fanflow.runtime.prepare_run` built."""
    return scheduler.start(
        run_id,
        inputs=setup.inputs,
        system=setup.system,
        environment=setup.environment,
        conversation=setup.conversation,
        conversation_types=setup.conversation_types,
        history=setup.history,
    )


async def settle_items(
    scheduler: Scheduler, state: RunState, commands: Sequence[Command], items: ItemStore
) -> list[Command]:
    """Record every `RecordItem` in `items` and answer every `CollectItems` from it (which
    advances `state`, in place); the other commands, in order."""
    rest: list[Command] = []
    queue = list(commands)
    while queue:
        command = queue.pop(0)
        if isinstance(command, RecordItem):
            await items.record_item(
                command.iteration, command.index, command.value, command.removed
            )
        elif isinstance(command, CollectItems):
            stored = await items.collect_items(command.iteration)
            outcomes = tuple(ItemOutcome(i.index, i.value, i.removed) for i in stored)
            queue[0:0] = scheduler.advance(state, ItemsCollected(command.iteration, outcomes))
        else:
            rest.append(command)
    return rest
