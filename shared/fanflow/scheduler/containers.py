"""Iteration and loop bookkeeping: item windows, rounds, fan-in of item results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fanflow.errors import NodeError
from fanflow.nodes import evaluate_break
from fanflow.nodes.conditions import TYPE_ERROR
from fanflow.scheduler.protocol import CollectItems, ItemsCollected, RecordItem
from fanflow.scheduler.state import (
    Failure,
    IterationFrame,
    LoopFrame,
    Scope,
    child_scope_key,
    frame_key,
)
from fanflow.scheduler.tolerance import tolerance_of
from fanflow.variables import Lookup, resolve_or_none, walk_path
from fanflow.vocabulary import EventName, NodeStatus
from fanflow.workflow import Node

if TYPE_CHECKING:
    from fanflow.scheduler.scheduler import _Step

DEFAULT_PARALLEL_NUMS = 10


def start_container(step: _Step, scope: Scope, node: Node) -> None:
    if node.type == "iteration":
        _start_iteration(step, scope, node)
    else:
        _start_loop(step, scope, node)


def close_child_scope(step: _Step, scope: Scope) -> None:
    """An item or round scope has nothing left to run: fold it into its container."""
    container = step.workflow.nodes[scope.container or ""]
    if container.type == "iteration":
        _close_item(step, scope, container)
    else:
        _close_round(step, scope, container)


def drop_scope(step: _Step, key: str) -> None:
    """Forget a scope and everything nested in it (late results for it are then ignored)."""
    state = step.state
    state.scopes.pop(key, None)
    nested = key + "/"
    for other in [k for k in state.scopes if k.startswith(nested)]:
        del state.scopes[other]
    for frames in (state.iterations, state.loops):
        for other in [k for k in frames if k.startswith(key + "|") or k.startswith(nested)]:
            del frames[other]


# ---- iteration --------------------------------------------------------------------


def _iteration_items(step: _Step, scope_key: str, node: Node) -> Any:
    selector = node.data.get("iterator_selector") or []
    return resolve_or_none(step.lookup(scope_key), selector)


def _window(node: Node) -> int:
    if not node.data.get("is_parallel"):
        return 1
    try:
        return max(1, int(node.data.get("parallel_nums") or DEFAULT_PARALLEL_NUMS))
    except (TypeError, ValueError):
        return DEFAULT_PARALLEL_NUMS


def _start_iteration(step: _Step, scope: Scope, node: Node) -> None:
    selector = node.data.get("iterator_selector") or []
    try:
        items = step.lookup(scope.key)(selector)
    except KeyError:
        # absent (its producer was skipped or never ran) fails; a present null is empty
        step.node_failed(
            scope,
            node,
            f"iterator variable {list(selector)} of {node.label()} not found",
            "IteratorVariableNotFoundError",
        )
        return
    if items is None:
        items = []
    if not isinstance(items, list):
        step.node_failed(
            scope,
            node,
            f"iterator_selector of {node.label()} must be an array, got {type(items).__name__}",
            "InvalidIteratorValueError",
        )
        return
    step.emit(EventName.ITERATION_STARTED, scope, node, count=len(items))
    if not items:
        step.emit(EventName.ITERATION_COMPLETED, scope, node, status=NodeStatus.SUCCEEDED, count=0)
        step.node_succeeded(scope, node, {"output": []})
        return
    frame = IterationFrame(scope=scope.key, node_id=node.id, count=len(items))
    key = frame_key(scope.key, node.id)
    step.state.iterations[key] = frame
    # a redrive: the items done before it are in the item store already
    frame.skip = step.state.redrive_skip.pop(key, [])
    _fill_window(step, frame, node, items)
    if not frame.active and frame.done >= frame.count and not frame.collecting:
        frame.collecting = True
        step.out.append(CollectItems(key, frame.count))


def _fill_window(step: _Step, frame: IterationFrame, node: Node, items: Sequence[Any]) -> None:
    window = _window(node)
    while frame.failure is None and len(frame.active) < window and frame.next_index < frame.count:
        if frame.skipped < len(frame.skip) and frame.skip[frame.skipped] <= frame.next_index:
            if frame.skip[frame.skipped] == frame.next_index:
                frame.next_index += 1
                frame.done += 1
            frame.skipped += 1
            continue
        index = frame.next_index
        frame.next_index += 1
        frame.active.append(index)
        item = items[index] if index < len(items) else None
        key = child_scope_key(frame.scope, node.id, index)
        step.state.scopes[key] = Scope(
            key=key, parent=frame.scope, container=node.id, index=index, item=item
        )
        parent = step.state.scopes[frame.scope]
        step.emit(EventName.ITERATION_NEXT, parent, node, index=index)
        step.enter_scope(key)


def _close_item(step: _Step, scope: Scope, node: Node) -> None:
    state = step.state
    key = frame_key(scope.parent or "", node.id)
    frame = state.iterations[key]
    mode = node.data.get("error_handle_mode") or "terminated"
    if scope.failure is None:
        step.respond(state.scopes[frame.scope], outputs=scope.outputs)
        if scope.answer is not None and scope.index > frame.answer_index:
            frame.answer, frame.answer_index = scope.answer, scope.index
        selector = node.data.get("output_selector") or []
        value = resolve_or_none(step.lookup(scope.key), selector)
        step.out.append(RecordItem(key, scope.index, value))
    elif mode == "continue-on-error":
        state.exceptions_count += 1
        step.out.append(RecordItem(key, scope.index, None))
    elif mode == "remove-abnormal-output":
        state.exceptions_count += 1
        step.out.append(RecordItem(key, scope.index, None, removed=True))
    elif frame.failure is None and _tolerated(frame, node, scope.index, scope.failure):
        state.exceptions_count += 1
        step.out.append(RecordItem(key, scope.index, None))
    elif frame.failure is None:
        frame.failure = scope.failure
    drop_scope(step, scope.key)
    frame.active.remove(scope.index)
    frame.done += 1
    parent = state.scopes[frame.scope]
    if frame.failure is None and frame.next_index < frame.count:
        _fill_window(step, frame, node, _iteration_items(step, frame.scope, node) or [])
    if frame.active:
        return
    if frame.failure is not None:
        failure = frame.failure
        del state.iterations[key]
        step.emit(
            EventName.ITERATION_COMPLETED,
            parent,
            node,
            status=NodeStatus.FAILED,
            error=failure.error,
        )
        step.node_failed(parent, node, failure.error, failure.error_type)
        return
    if frame.done >= frame.count and not frame.collecting:
        frame.collecting = True
        step.out.append(CollectItems(key, frame.count))


def _tolerated(frame: IterationFrame, node: Node, index: int, failure: Failure) -> bool:
    """Record a failed item within the iteration's `fanflow` tolerance; False once the
    failures cross it (the frame's failure then says by how much)."""
    tolerance = tolerance_of(node.data)
    if tolerance is None:
        return False
    allowed = tolerance.allowed(frame.count)
    failed = len(frame.tolerated) + 1
    if failed <= allowed:
        frame.tolerated.append({"index": index, "error": failure.error})
        return True
    frame.failure = Failure(
        node.id,
        f"{node.label()}: {failed} of {frame.count} items failed, more than the tolerated "
        f"{allowed}; item {index}: {failure.error}",
        "ToleratedFailuresExceeded",
    )
    return False


def on_items_collected(step: _Step, event: ItemsCollected) -> None:
    state = step.state
    frame = state.iterations.get(event.iteration)
    if frame is None or not frame.collecting:
        return
    node = step.workflow.nodes[frame.node_id]
    outcomes = sorted(event.outcomes, key=lambda o: o.index)
    outputs = [o.value for o in outcomes if not o.removed]
    if node.data.get("flatten_output", True):
        outputs = _flatten(outputs)
    del state.iterations[event.iteration]
    parent = state.scopes[frame.scope]
    if frame.answer is not None:
        step.respond(parent, answer=frame.answer)
    step.emit(
        EventName.ITERATION_COMPLETED, parent, node, status=NodeStatus.SUCCEEDED, count=frame.count
    )
    result: dict[str, Any] = {"output": outputs}
    if tolerance_of(node.data) is not None:
        result["failed_items"] = list(frame.tolerated)
    step.node_succeeded(parent, node, result)


def _flatten(outputs: list[Any]) -> list[Any]:
    present = [o for o in outputs if o is not None]
    if not present or not all(isinstance(o, list) for o in present):
        return outputs
    return [value for o in present for value in o]


# ---- loop -------------------------------------------------------------------------


class _LoopLookup:
    """Sees the loop's variables at `[loop_id, label]` before its first round starts."""

    def __init__(self, base: Lookup, loop_id: str, frame: LoopFrame) -> None:
        self._base, self._loop_id, self._frame = base, loop_id, frame

    def __call__(self, selector: Sequence[str]) -> Any:
        variables = self._frame.variables
        if len(selector) >= 2 and selector[0] == self._loop_id and selector[1] in variables:
            return walk_path(variables[selector[1]], selector[2:])
        return self._base(selector)


def _start_loop(step: _Step, scope: Scope, node: Node) -> None:
    lookup = step.lookup(scope.key)
    frame = LoopFrame(scope=scope.key, node_id=node.id)
    for variable in node.data.get("loop_variables") or []:
        label = str(variable.get("label"))
        frame.types[label] = str(variable.get("var_type") or "string")
        value = variable.get("value")
        if variable.get("value_type") == "variable":
            try:
                value = lookup(value or [])
            except KeyError:
                step.node_failed(
                    scope,
                    node,
                    f"Invalid value for loop variable {label}: {value!r} of {node.label()} "
                    "does not exist",
                    "LoopVariableError",
                )
                return
        else:
            value = _constant(frame.types[label], value)
        frame.variables[label] = value
    key = frame_key(scope.key, node.id)
    step.state.loops[key] = frame
    step.emit(EventName.LOOP_STARTED, scope, node)
    try:
        loop_count = int(node.data.get("loop_count") or 0)
    except (TypeError, ValueError):
        loop_count = 0
    try:
        done = loop_count <= 0 or _should_break(
            node, _LoopLookup(lookup, node.id, frame), strict=False
        )
    except NodeError as exc:
        del step.state.loops[key]
        step.emit(EventName.LOOP_COMPLETED, scope, node, status=NodeStatus.FAILED, error=str(exc))
        step.node_failed(scope, node, str(exc), exc.error_type)
        return
    if done:
        _finish_loop(step, key, rounds=0)
        return
    _start_round(step, frame, node)


def _constant(var_type: str, value: Any) -> Any:
    """A constant loop variable's first value, read as Dify reads it: an array of numbers,
    strings or objects takes a non-empty JSON string (anything else starts empty); other
    types decode a JSON string only when they are not strings themselves."""
    if var_type in ("array[number]", "array[string]", "array[object]"):
        if isinstance(value, str) and value:
            try:
                return json.loads(value)
            except ValueError:
                return []
        return []
    if isinstance(value, str) and var_type != "string":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _should_break(node: Node, lookup: Lookup, *, strict: bool) -> bool:
    conditions = node.data.get("break_conditions") or []
    if not conditions:
        return False
    operator = str(node.data.get("logical_operator") or "and")
    try:
        return evaluate_break(conditions, operator, lookup)
    except NodeError as exc:
        # before round 0 Dify ignores a condition that cannot be evaluated yet, but not a
        # condition whose types can never match
        if strict or exc.error_type == TYPE_ERROR:
            raise
        return False


def _start_round(step: _Step, frame: LoopFrame, node: Node) -> None:
    key = child_scope_key(frame.scope, node.id, frame.round)
    step.state.scopes[key] = Scope(
        key=key, parent=frame.scope, container=node.id, index=frame.round
    )
    step.emit(EventName.LOOP_NEXT, step.state.scopes[frame.scope], node, index=frame.round)
    step.enter_scope(key)


def _close_round(step: _Step, scope: Scope, node: Node) -> None:
    state = step.state
    key = frame_key(scope.parent or "", node.id)
    frame = state.loops[key]
    parent = state.scopes[frame.scope]
    failure: Failure | None = scope.failure
    done = False
    if failure is None:
        try:
            done = scope.loop_ended or _should_break(node, step.lookup(scope.key), strict=True)
        except NodeError as exc:
            failure = Failure(node.id, str(exc), exc.error_type)
    if failure is None:
        step.merge_responses(scope)
    drop_scope(step, scope.key)
    if failure is not None:
        del state.loops[key]
        step.emit(
            EventName.LOOP_COMPLETED, parent, node, status=NodeStatus.FAILED, error=failure.error
        )
        step.node_failed(parent, node, failure.error, failure.error_type)
        return
    rounds = frame.round + 1
    loop_count = int(node.data.get("loop_count") or 0)
    if done or rounds >= loop_count:
        _finish_loop(step, key, rounds=rounds)
        return
    frame.round = rounds
    _start_round(step, frame, node)


def _finish_loop(step: _Step, key: str, *, rounds: int) -> None:
    frame = step.state.loops.pop(key)
    node = step.workflow.nodes[frame.node_id]
    parent = step.state.scopes[frame.scope]
    outputs = dict(frame.variables)
    if rounds:
        outputs["loop_round"] = rounds
    step.emit(EventName.LOOP_COMPLETED, parent, node, status=NodeStatus.SUCCEEDED, rounds=rounds)
    step.node_succeeded(parent, node, outputs)
