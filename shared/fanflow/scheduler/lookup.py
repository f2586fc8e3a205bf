"""Resolving selectors against run state, from inside a given scope."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from fanflow.scheduler.state import RunState, Scope, frame_key
from fanflow.variables import walk_path
from fanflow.workflow import Workflow


def scope_chain(state: RunState, scope_key: str) -> Iterator[Scope]:
    """The scope and its enclosing scopes, innermost first."""
    key: str | None = scope_key
    while key is not None:
        scope = state.scopes[key]
        yield scope
        key = scope.parent


class ScopeLookup:
    """A `Lookup` over run state as seen by a node in `scope_key`."""

    def __init__(self, workflow: Workflow, state: RunState, scope_key: str) -> None:
        self._workflow = workflow
        self._state = state
        self._scope_key = scope_key

    def __call__(self, selector: Sequence[str]) -> Any:
        if len(selector) < 2:
            raise KeyError(".".join(selector))
        head, name, path = selector[0], selector[1], selector[2:]
        state = self._state
        if head == "sys":
            return walk_path(state.system[name], path)
        if head == "env":
            return walk_path(state.environment[name], path)
        if head == "conversation":
            return walk_path(state.conversation[name], path)
        node = self._workflow.nodes.get(head)
        if node is None:
            raise KeyError(head)
        for scope in scope_chain(state, self._scope_key):
            if scope.container == head:
                return walk_path(self._container_value(scope, name), path)
            if scope.container == node.parent_id:
                record = scope.nodes.get(head)
                if record is None or record.outputs is None:
                    raise KeyError(head)
                return walk_path(record.outputs[name], path)
        raise KeyError(head)

    def _container_value(self, scope: Scope, name: str) -> Any:
        container = self._workflow.nodes[scope.container or ""]
        if container.type == "iteration":
            if name == "item":
                return scope.item
            if name == "index":
                return scope.index
            raise KeyError(name)
        frame = self._state.loops[frame_key(scope.parent or "", container.id)]
        if name in frame.variables:
            return frame.variables[name]
        if name == "index":
            return scope.index
        raise KeyError(name)
