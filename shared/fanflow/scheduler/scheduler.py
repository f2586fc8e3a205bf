"""The pure scheduler: `step(state, event) -> (state, commands)`.

No I/O, no clock, no randomness. Shells (the embedded runner, the aggregator) load state,
call `start` or `step`, persist the new state and carry out the commands.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fanflow import defaults
from fanflow.chat.memory import latest, window_turns
from fanflow.errors import NodeError
from fanflow.messages import NodeTask, TaskResult, task_id_for
from fanflow.registry import RETRYABLE_NODE_TYPES
from fanflow.scheduler import containers, inline, race, redrive
from fanflow.scheduler.lookup import ScopeLookup
from fanflow.scheduler.protocol import (
    DEADLINE_TIMER,
    CancelTasks,
    Command,
    DispatchTask,
    Emit,
    Event,
    ItemsCollected,
    RunFinished,
    StartTimer,
    StopRequested,
    TaskFinished,
    TimerFired,
)
from fanflow.scheduler.state import (
    FAILED,
    NODE_EXCEPTION,
    NODE_FAILED,
    NODE_RUNNING,
    NODE_SKIPPED,
    NODE_SUCCEEDED,
    PARTIAL,
    SKIPPED,
    STOPPED,
    SUCCEEDED,
    TAKEN,
    Failure,
    NodeRecord,
    RunState,
    Scope,
)
from fanflow.variables import selector_key
from fanflow.vocabulary import EventName
from fanflow.workflow import Node, Workflow


@dataclass(frozen=True)
class Limits:
    """Per-run limits. Dify's are 500 steps and 1200 s; fanflow's are configurable."""

    max_steps: int = defaults.MAX_STEPS
    max_run_seconds: float = defaults.MAX_RUN_SECONDS
    task_timeout_s: float | None = None


class Scheduler:
    """Applies Dify's engine semantics to one workflow. Holds no run data of its own."""

    def __init__(self, workflow: Workflow, *, limits: Limits | None = None) -> None:
        self.workflow = workflow
        self.limits = limits or Limits()

    # ---- entry points --------------------------------------------------------------

    def start(
        self,
        run_id: str,
        *,
        inputs: Mapping[str, Any],
        system: Mapping[str, Any] | None = None,
        environment: Mapping[str, Any] | None = None,
        conversation: Mapping[str, Any] | None = None,
        conversation_types: Mapping[str, str] | None = None,
        history: Sequence[Mapping[str, str]] = (),
    ) -> tuple[RunState, list[Command]]:
        """Create a run's state and its first commands. `inputs` are already prepared;
        `history` is a chatflow turn's earlier turns (`{query, answer}`, oldest first)."""
        state = RunState(
            run_id=run_id,
            inputs=dict(inputs),
            system=dict(system or {}),
            environment=dict(environment or {}),
            conversation=dict(conversation or {}),
            conversation_types=dict(conversation_types or {}),
            history=[{"query": t["query"], "answer": t["answer"]} for t in history],
        )
        state.scopes[""] = Scope(key="")
        step = _Step(self, state)
        step.out.append(Emit(EventName.WORKFLOW_STARTED, {"inputs": dict(inputs)}))
        if self.limits.max_run_seconds:
            step.out.append(StartTimer(DEADLINE_TIMER, int(self.limits.max_run_seconds * 1000)))
        step.enter_scope("")
        step.settle()
        return state, step.out

    def redrive(self, state: RunState, done_items: Mapping[str, Sequence[int]]) -> list[Command]:
        """Restart a failed or stopped run in place from its failed nodes
        (`fanflow.scheduler.redrive`); `done_items`: for each key `redrive_iterations`
        names, the indexes of the items the item store holds. Raises `NotRedrivable`."""
        step = _Step(self, state)
        redrive.redrive(step, done_items)
        step.settle()
        return step.out

    def redrive_iterations(self, state: RunState) -> list[str]:
        """Item store keys whose recorded indexes `redrive` needs."""
        return redrive.iterations_to_redrive(self.workflow, state)

    def step(self, state: RunState, event: Event) -> tuple[RunState, list[Command]]:
        """Apply one event. The given state is not modified; a new one is returned."""
        state = copy.deepcopy(state)
        return state, self.advance(state, event)

    def advance(self, state: RunState, event: Event) -> list[Command]:
        """`step` for a caller that owns `state` and will not look at it again: the state
        is changed in place (no copy: a run's state holds its iteration's input list)."""
        if state.finished:
            return []
        step = _Step(self, state)
        if isinstance(event, TaskFinished):
            step.on_task_finished(event.result)
        elif isinstance(event, ItemsCollected):
            containers.on_items_collected(step, event)
        elif isinstance(event, TimerFired):
            if event.name == DEADLINE_TIMER:
                step.end_run(
                    STOPPED, f"run exceeded the time limit of {self.limits.max_run_seconds:g} s"
                )
        elif isinstance(event, StopRequested):
            step.end_run(STOPPED, event.reason)
        else:  # pragma: no cover - typing guards this
            raise TypeError(f"unknown event {event!r}")
        step.settle()
        return step.out


class _StepLimit(Exception):
    """Raised inside a step when the run's step budget is spent."""


class _Step:
    """The mutable working context of one `start`/`step` call."""

    def __init__(self, scheduler: Scheduler, state: RunState) -> None:
        self.scheduler = scheduler
        self.workflow = scheduler.workflow
        self.state = state
        self.out: list[Command] = []
        self._dirty: list[str] = []

    # ---- scopes and readiness ------------------------------------------------------

    def lookup(self, scope_key: str) -> ScopeLookup:
        return ScopeLookup(self.workflow, self.state, scope_key)

    def enter_scope(self, scope_key: str) -> None:
        scope = self.state.scopes[scope_key]
        start = self.workflow.start_node(scope.container)
        self.run_node(scope, start)

    def mark_dirty(self, scope_key: str) -> None:
        if scope_key not in self._dirty:
            self._dirty.append(scope_key)

    def settle(self) -> None:
        """Advance every touched scope until nothing more can happen without an event."""
        try:
            while self._dirty and not self.state.finished:
                scope_key = self._dirty.pop(0)
                scope = self.state.scopes.get(scope_key)
                if scope is None:
                    continue
                self._advance(scope)
        except _StepLimit:
            self.end_run(
                STOPPED, f"run exceeded the limit of {self.scheduler.limits.max_steps} steps"
            )

    def _advance(self, scope: Scope) -> None:
        progressed = True
        while progressed and not self.state.finished and scope.key in self.state.scopes:
            progressed = False
            if scope.failure is not None:
                break
            for node_id in self.workflow.children.get(scope.container, ()):
                if node_id in scope.nodes:
                    continue
                verdict = self._readiness(scope, node_id)
                if verdict is None:
                    continue
                progressed = True
                if verdict:
                    self.run_node(scope, self.workflow.nodes[node_id])
                else:
                    self._skip(scope, node_id)
                if scope.failure is not None or scope.key not in self.state.scopes:
                    break
        if scope.key in self.state.scopes and not self.state.finished:
            self._maybe_close(scope)

    def _readiness(self, scope: Scope, node_id: str) -> bool | None:
        """True: ready; False: every incoming edge skipped; None: wait (or no edges)."""
        incoming = self.workflow.in_edges.get(node_id, ())
        if not incoming:
            return None
        states = [scope.edges.get(edge.id) for edge in incoming]
        if race.is_race(self.workflow.nodes[node_id]):
            return race.readiness(states)
        if any(s is None for s in states):
            return None
        return any(s == TAKEN for s in states)

    def _skip(self, scope: Scope, node_id: str) -> None:
        scope.nodes[node_id] = NodeRecord(status=NODE_SKIPPED)
        for edge in self.workflow.out_edges.get(node_id, ()):
            scope.edges[edge.id] = SKIPPED

    def _maybe_close(self, scope: Scope) -> None:
        """Close a scope once it failed, or once nothing in it is running any more."""
        if scope.failure is None and any(
            record.status == NODE_RUNNING for record in scope.nodes.values()
        ):
            return
        if scope.key == "":
            if scope.failure is not None:
                self.end_run(FAILED, scope.failure.error)
            else:
                self.end_run(PARTIAL if self.state.exceptions_count else SUCCEEDED, None)
            return
        containers.close_child_scope(self, scope)

    # ---- running nodes -------------------------------------------------------------

    def count_step(self) -> None:
        self.state.steps += 1
        if self.state.steps > self.scheduler.limits.max_steps:
            raise _StepLimit

    def run_node(self, scope: Scope, node: Node) -> None:
        self.count_step()
        if race.is_race(node):
            race.cancel_losers(self, scope, node)
        scope.nodes[node.id] = NodeRecord(status=NODE_RUNNING)
        self.emit(EventName.NODE_STARTED, scope, node)
        if node.is_task:
            self.dispatch(scope, node, attempt=0)
            return
        if node.is_container:
            containers.start_container(self, scope, node)
            return
        try:
            outputs, handle = inline.evaluate(self, scope, node)
        except NodeError as exc:
            self.node_failed(scope, node, str(exc), exc.error_type)
            return
        self.node_succeeded(scope, node, outputs, handle)

    def dispatch(self, scope: Scope, node: Node, *, attempt: int, delay_ms: int = 0) -> None:
        lookup = self.lookup(scope.key)
        variables: dict[str, Any] = {}
        selectors = self.workflow.reads[node.id]
        memory = node.data.get("memory")
        if node.type == "llm" and memory:
            # memory's last turn: the user's query
            selectors = (*selectors, ("sys", "query"))
        for selector in selectors:
            try:
                variables[selector_key(selector)] = lookup(selector)
            except KeyError:
                continue
        task = NodeTask(
            task_id=task_id_for(self.state.run_id, node.id, scope.key, attempt)
            + redrive.task_suffix(self.state),
            run_id=self.state.run_id,
            node_id=node.id,
            node_type=node.type,
            node_title=node.title,
            scope=scope.key,
            attempt=attempt,
            data=dict(node.data),
            variables=variables,
            timeout_s=self.scheduler.limits.task_timeout_s,
            history=latest(self.state.history, window_turns(node.type, memory)),
            generation=self.state.redrives,
        )
        scope.nodes[node.id].attempt = attempt
        self.out.append(DispatchTask(task, delay_ms=delay_ms))

    def on_task_finished(self, result: TaskResult) -> None:
        scope = self.state.scopes.get(result.scope)
        if scope is None or result.run_id != self.state.run_id:
            return  # a late result of an item or round that already ended
        record = scope.nodes.get(result.node_id)
        if record is None or record.status != NODE_RUNNING or record.attempt != result.attempt:
            return  # duplicate or stale delivery
        if not result.task_id.endswith(redrive.task_suffix(self.state) or result.task_id):
            return  # a result of the attempt before the run's last redrive
        node = self.workflow.nodes[result.node_id]
        self.state.total_tokens += result.total_tokens
        tokens = result.total_tokens
        if result.status == "succeeded":  # TaskResult.status is a Literal of NodeStatus values
            self.node_succeeded(
                scope, node, dict(result.outputs), result.edge_handle, total_tokens=tokens
            )
            return
        error = result.error or "node failed"
        retry = node.retry
        if (
            result.retryable
            and (node.type in RETRYABLE_NODE_TYPES or retry.extended)
            and result.attempt < retry.max_retries
            and retry.allows(result.reason)
        ):
            delay_ms = max(
                retry.delay_ms(result.attempt, key=result.task_id), result.retry_after_ms or 0
            )
            # waiting past the run's deadline is pointless (and an upstream may ask for days)
            delay_ms = min(delay_ms, self._max_delay_ms())
            self.emit(
                EventName.NODE_RETRY, scope, node, error=error, retry_index=result.attempt + 1
            )
            self.dispatch(scope, node, attempt=result.attempt + 1, delay_ms=delay_ms)
            return
        self.node_failed(scope, node, error, result.error_type or "NodeError", total_tokens=tokens)

    def node_succeeded(
        self,
        scope: Scope,
        node: Node,
        outputs: dict[str, Any],
        handle: str | None = None,
        *,
        total_tokens: int = 0,
    ) -> None:
        self._node_done(scope, node, NODE_SUCCEEDED, outputs, handle or "source", total_tokens)

    def _node_done(
        self,
        scope: Scope,
        node: Node,
        status: str,
        outputs: dict[str, Any],
        handle: str,
        total_tokens: int,
        **extra: Any,
    ) -> None:
        """The node ended and its run goes on along `handle` (succeeded, or an exception
        its error strategy handles)."""
        record = scope.nodes[node.id]
        record.status = status
        record.outputs = outputs
        record.handle = handle
        self.emit(
            EventName.NODE_FINISHED,
            scope,
            node,
            status=status,
            outputs=outputs,
            **extra,
            attempt=record.attempt,
            total_tokens=total_tokens,
        )
        self._resolve_out_edges(scope, node, handle)
        self.mark_dirty(scope.key)

    def node_failed(
        self, scope: Scope, node: Node, error: str, error_type: str, *, total_tokens: int = 0
    ) -> None:
        record = scope.nodes[node.id]
        strategy = node.error_strategy
        if strategy in ("fail-branch", "default-value"):
            self.state.exceptions_count += 1
            outputs: dict[str, Any] = {}
            if strategy == "default-value":
                outputs.update({d.key: d.value for d in node.default_values})
            outputs.update({"error_message": error, "error_type": error_type})
            handle = "fail-branch" if strategy == "fail-branch" else "source"
            self._node_done(scope, node, NODE_EXCEPTION, outputs, handle, total_tokens, error=error)
            return
        record.status = NODE_FAILED
        record.outputs = None
        self.emit(
            EventName.NODE_FINISHED,
            scope,
            node,
            status=NODE_FAILED,
            error=error,
            attempt=record.attempt,
            total_tokens=total_tokens,
        )
        if scope.failure is None:
            scope.failure = Failure(node_id=node.id, error=error, error_type=error_type)
        self.mark_dirty(scope.key)

    def _resolve_out_edges(self, scope: Scope, node: Node, handle: str) -> None:
        for edge in self.workflow.out_edges.get(node.id, ()):
            scope.edges[edge.id] = TAKEN if edge.source_handle == handle else SKIPPED

    def _max_delay_ms(self) -> int:
        limit_s = self.scheduler.limits.max_run_seconds or defaults.MAX_RETRY_DELAY_S
        return int(min(limit_s, defaults.MAX_RETRY_DELAY_S) * 1000)

    # ---- responses (End and Answer nodes) -----------------------------------------

    def respond(
        self, scope: Scope, *, outputs: dict[str, Any] | None = None, answer: str | None = None
    ) -> None:
        """Add End outputs or Answer text: to the run at top level, else to the scope."""
        holder: Any = self.state if scope.key == "" else scope
        if outputs:
            holder.outputs.update(outputs)
        if answer is not None:
            holder.answer = (holder.answer or "") + answer

    def merge_responses(self, child: Scope) -> None:
        """A child scope ended well: its End/Answer results join its parent's."""
        parent = self.state.scopes[child.parent or ""]
        self.respond(parent, outputs=child.outputs, answer=child.answer)

    # ---- run end and events --------------------------------------------------------

    def end_run(self, status: str, error: str | None) -> None:
        if self.state.finished:
            return
        state = self.state
        state.status = status
        state.error = error
        if status in (FAILED, STOPPED):
            self.out.append(CancelTasks(state.run_id))
            self._close_running_nodes(STOPPED if status == STOPPED else NODE_FAILED, error)
        outputs = dict(state.outputs) if status in (SUCCEEDED, PARTIAL) else {}
        if state.answer is not None and status in (SUCCEEDED, PARTIAL):
            outputs.setdefault("answer", state.answer)
            outputs.setdefault("files", [])
        state.outputs = outputs
        self.out.append(
            Emit(
                EventName.WORKFLOW_FINISHED,
                {
                    "status": status,
                    "outputs": outputs,
                    "error": error,
                    "total_steps": state.steps,
                    "total_tokens": state.total_tokens,
                    "exceptions_count": state.exceptions_count,
                },
            )
        )
        self.out.append(RunFinished(status=status, outputs=outputs, error=error))

    def _close_running_nodes(self, status: str, error: str | None) -> None:
        """Nodes cut off by the run's end finish too (innermost first), so no log shows a
        node running in a finished run."""
        for scope in sorted(self.state.scopes.values(), key=lambda s: -s.key.count("/")):
            for node_id, record in scope.nodes.items():
                if record.status == NODE_RUNNING:
                    record.status = status
                    self.emit(
                        EventName.NODE_FINISHED,
                        scope,
                        self.workflow.nodes[node_id],
                        status=status,
                        error=error,
                    )

    def emit(self, event: str, scope: Scope, node: Node, **data: Any) -> None:
        payload: dict[str, Any] = {
            "node_id": node.id,
            "node_type": node.type,
            "title": node.title,
            "scope": scope.key,
        }
        if scope.container is not None:
            container = self.workflow.nodes[scope.container]
            payload[f"{container.type}_id"] = container.id
            payload[f"{container.type}_index"] = scope.index
        payload.update(data)
        self.out.append(Emit(event, payload))


__all__ = ["Limits", "Scheduler"]
