"""Focused tests of the pure scheduler's Dify semantics: one behaviour per test.

Workflows are built in code; events are delivered by hand so each test decides exactly
which result arrives when, and asserts the commands that come back.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from fanflow.kernel import MemoryItems, start_run
from fanflow.messages import NodeTask, TaskResult
from fanflow.runtime import RunSetup
from fanflow.scheduler import (
    CancelTasks,
    CollectItems,
    Command,
    DispatchTask,
    Emit,
    Event,
    ItemOutcome,
    ItemsCollected,
    Limits,
    RecordItem,
    RunFinished,
    RunState,
    Scheduler,
    StartTimer,
    StopRequested,
    TaskFinished,
    TimerFired,
    dump_state,
    load_state,
)
from fanflow.workflow import DefaultValue, Edge, Node, RetryConfig, Workflow

# ---- building workflows ------------------------------------------------------------------


class _Graph:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.edges: list[Edge] = []

    def add(
        self,
        node_id: str,
        type_: str,
        *,
        parent: str | None = None,
        title: str | None = None,
        error_strategy: str | None = None,
        defaults: Iterable[tuple[str, str, Any]] = (),
        retry: tuple[int, int] = (0, 0),
        **data: Any,
    ) -> str:
        title = title or node_id
        body: dict[str, Any] = {"type": type_, "title": title, **data}
        if error_strategy:
            body["error_strategy"] = error_strategy
        self.nodes[node_id] = Node(
            node_id,
            type_,
            title,
            body,
            parent_id=parent,
            error_strategy=error_strategy,
            default_values=tuple(DefaultValue(k, t, v) for k, t, v in defaults),
            retry=RetryConfig(max_retries=retry[0], retry_interval_ms=retry[1]),
        )
        return node_id

    def link(self, source: str, target: str, handle: str = "source") -> None:
        self.edges.append(Edge(f"{source}-{handle}-{target}", source, target, handle))

    def chain(self, *node_ids: str) -> None:
        for source, target in itertools.pairwise(node_ids):
            self.link(source, target)

    def build(self) -> Workflow:
        return Workflow("test", "workflow", "0.3.0", dict(self.nodes), tuple(self.edges))


def _start(g: _Graph, *names: str) -> str:
    variables = [{"variable": n, "type": "text-input", "required": False} for n in names]
    return g.add("start", "start", variables=variables)


def _code(g: _Graph, node_id: str, reads: dict[str, list[str]], **extra: Any) -> str:
    return g.add(
        node_id,
        "code",
        code_language="python3",
        code="def main(**kw):\n    return {'out': 1}\n",
        variables=[{"variable": k, "value_selector": v} for k, v in reads.items()],
        outputs={"out": {"type": "number"}},
        **extra,
    )


def _end(g: _Graph, node_id: str, outputs: dict[str, list[str]]) -> str:
    return g.add(
        node_id,
        "end",
        outputs=[{"variable": k, "value_selector": v} for k, v in outputs.items()],
    )


def _condition(selector: list[str], operator: str, value: str) -> dict[str, Any]:
    return {
        "variable_selector": selector,
        "comparison_operator": operator,
        "value": value,
        "varType": "number",
    }


# ---- results and a hand-driven run -------------------------------------------------------


def ok(task: NodeTask, **outputs: Any) -> TaskResult:
    return TaskResult(
        task_id=task.task_id,
        run_id=task.run_id,
        node_id=task.node_id,
        scope=task.scope,
        attempt=task.attempt,
        status="succeeded",
        outputs=outputs,
    )


def failed(
    task: NodeTask,
    error: str = "boom",
    *,
    error_type: str = "Boom",
    retryable: bool = True,
    retry_after_ms: int | None = None,
) -> TaskResult:
    return TaskResult(
        task_id=task.task_id,
        run_id=task.run_id,
        node_id=task.node_id,
        scope=task.scope,
        attempt=task.attempt,
        status="failed",
        error=error,
        error_type=error_type,
        retryable=retryable,
        retry_after_ms=retry_after_ms,
    )


def dispatched(commands: Iterable[Command]) -> list[DispatchTask]:
    return [c for c in commands if isinstance(c, DispatchTask)]


def of_type(commands: Iterable[Command], kind: type) -> list[Any]:
    return [c for c in commands if isinstance(c, kind)]


def emitted(commands: Iterable[Command], event: str) -> list[dict[str, Any]]:
    return [c.data for c in commands if isinstance(c, Emit) and c.event == event]


class Run:
    """One run driven by hand: `send` an event, inspect what came back."""

    def __init__(
        self,
        workflow: Workflow,
        *,
        inputs: dict[str, Any] | None = None,
        limits: Limits | None = None,
        round_trip: bool = False,
    ) -> None:
        self.scheduler = Scheduler(workflow, limits=limits)
        self.round_trip = round_trip
        setup = RunSetup(inputs=dict(inputs or {}), system={"user_id": "u"})
        self.state, commands = start_run(self.scheduler, "run-1", setup)
        self.first = commands
        self.log: list[Command] = []
        self.outstanding: dict[str, NodeTask] = {}
        self.items = MemoryItems()
        self.collects: list[CollectItems] = []
        self.max_outstanding = 0
        self._track(commands)

    def _track(self, commands: list[Command]) -> None:
        self.log.extend(commands)
        for command in commands:
            if isinstance(command, DispatchTask):
                self.outstanding[command.task.task_id] = command.task
            elif isinstance(command, RecordItem):
                self.items.record(command)
            elif isinstance(command, CollectItems):
                self.collects.append(command)
        self.max_outstanding = max(self.max_outstanding, len(self.outstanding))

    def send(self, event: Event) -> list[Command]:
        if self.round_trip:
            self.state = load_state(dump_state(self.state))
        self.state, commands = self.scheduler.step(self.state, event)
        self._track(commands)
        return commands

    def finish(self, result: TaskResult) -> list[Command]:
        self.outstanding.pop(result.task_id, None)
        return self.send(TaskFinished(result))

    def task(self, node_id: str) -> NodeTask:
        (task,) = [t for t in self.outstanding.values() if t.node_id == node_id]
        return task

    def answer_collect(self) -> list[Command]:
        command = self.collects.pop(0)
        return self.send(ItemsCollected(command.iteration, self.items.collect(command.iteration)))

    def drain(
        self,
        execute: Callable[[NodeTask], TaskResult],
        *,
        pick: Callable[[list[NodeTask]], NodeTask] = lambda tasks: tasks[0],
        on_step: Callable[[RunState], None] | None = None,
    ) -> RunFinished:
        while not self.state.finished and (self.outstanding or self.collects):
            if self.collects:
                self.answer_collect()
            else:
                self.finish(execute(pick(list(self.outstanding.values()))))
            if on_step is not None:
                on_step(self.state)
        return self.finished()

    def finished(self) -> RunFinished:
        (finished,) = of_type(self.log, RunFinished)
        return finished


# ---- task dispatch -----------------------------------------------------------------------


def _two_tasks() -> Workflow:
    g = _Graph()
    _start(g, "x", "y", "z")
    _code(g, "A", {"x": ["start", "x"]})
    g.add(
        "B",
        "llm",
        model={"provider": "openai", "name": "gpt-4o", "mode": "chat"},
        prompt_template=[
            {"role": "user", "text": "{{#start.y#}} {{#A.out#}} for {{#sys.user_id#}}"}
        ],
    )
    _end(g, "end", {"text": ["B", "text"]})
    g.chain("start", "A", "B", "end")
    return g.build()


def test_task_is_dispatched_with_exactly_the_variables_it_reads() -> None:
    run = Run(_two_tasks(), inputs={"x": 1, "y": "hi", "z": "unused"})
    (a,) = dispatched(run.first)
    assert a.delay_ms == 0
    assert a.task.node_id == "A" and a.task.node_type == "code" and a.task.attempt == 0
    assert a.task.scope == "" and a.task.run_id == "run-1"
    assert a.task.variables == {"start.x": 1}
    assert a.task.data["variables"] == [{"variable": "x", "value_selector": ["start", "x"]}]

    commands = run.finish(ok(a.task, out=7))
    (b,) = dispatched(commands)
    assert b.task.node_id == "B"
    assert b.task.variables == {"start.y": "hi", "A.out": 7, "sys.user_id": "u"}

    run.finish(ok(b.task, text="done"))
    assert run.finished() == RunFinished("succeeded", {"text": "done"}, None)


def test_task_ids_differ_per_attempt() -> None:
    g = _Graph()
    _start(g)
    _code(g, "A", {}, retry=(1, 0))
    g.chain("start", "A")
    run = Run(g.build())
    (first,) = dispatched(run.first)
    (second,) = dispatched(run.finish(failed(first.task)))
    assert second.task.attempt == 1
    assert second.task.task_id != first.task.task_id


# ---- retries -----------------------------------------------------------------------------


def _retrying(strategy: str | None = None, node_type: str = "code") -> Workflow:
    g = _Graph()
    _start(g)
    if node_type == "code":
        _code(
            g,
            "A",
            {},
            retry=(2, 500),
            error_strategy=strategy,
            defaults=[("out", "number", -1)] if strategy == "default-value" else (),
        )
    else:
        g.add("A", node_type, retry=(2, 500), query=["start", "q"], parameters=[])
    _end(g, "end", {"out": ["A", "out"], "error": ["A", "error_message"]})
    g.chain("start", "A", "end")
    return g.build()


def test_retry_dispatches_next_attempts_after_the_interval_then_applies_the_strategy() -> None:
    run = Run(_retrying("default-value"))
    (attempt0,) = dispatched(run.first)

    commands = run.finish(failed(attempt0.task, "first"))
    (attempt1,) = dispatched(commands)
    assert (attempt1.task.attempt, attempt1.delay_ms) == (1, 500)
    assert [e["retry_index"] for e in emitted(commands, "node_retry")] == [1]
    assert not of_type(commands, RunFinished)

    (attempt2,) = dispatched(run.finish(failed(attempt1.task, "second")))
    assert (attempt2.task.attempt, attempt2.delay_ms) == (2, 500)

    commands = run.finish(failed(attempt2.task, "third", error_type="Third"))
    assert not dispatched(commands)
    assert run.finished().status == "partial-succeeded"
    assert run.finished().outputs == {"out": -1, "error": "third"}
    assert run.state.scopes[""].nodes["A"].outputs == {
        "out": -1,
        "error_message": "third",
        "error_type": "Third",
    }


def test_retries_exhausted_without_strategy_fail_the_run() -> None:
    run = Run(_retrying())
    task = dispatched(run.first)[0].task
    for _ in range(2):
        task = dispatched(run.finish(failed(task, f"try {task.attempt}")))[0].task
    run.finish(failed(task, "last try"))
    assert run.finished().status == "failed"
    assert run.finished().error == "last try"


def test_non_retryable_failure_is_not_retried() -> None:
    run = Run(_retrying())
    (a,) = dispatched(run.first)
    commands = run.finish(failed(a.task, "bad request", retryable=False))
    assert not dispatched(commands)
    assert not emitted(commands, "node_retry")
    assert run.finished().status == "failed"
    assert run.finished().error == "bad request"


def test_node_type_without_retry_support_is_not_retried() -> None:
    run = Run(_retrying(node_type="parameter-extractor"), inputs={})
    (a,) = dispatched(run.first)
    commands = run.finish(failed(a.task, "nope"))
    assert not dispatched(commands)
    assert run.finished().status == "failed"


@pytest.mark.parametrize(("retry_after_ms", "delay_ms"), [(2000, 2000), (100, 500), (None, 500)])
def test_retry_after_larger_than_the_interval_is_honoured(
    retry_after_ms: int | None, delay_ms: int
) -> None:
    run = Run(_retrying())
    (a,) = dispatched(run.first)
    (again,) = dispatched(run.finish(failed(a.task, "429", retry_after_ms=retry_after_ms)))
    assert again.task.attempt == 1
    assert again.delay_ms == delay_ms


def test_duplicate_result_is_ignored() -> None:
    g = _Graph()
    _start(g)
    _code(g, "A", {})
    _code(g, "B", {"a": ["A", "out"]})
    _end(g, "end", {"b": ["B", "out"]})
    g.chain("start", "A", "B", "end")
    run = Run(g.build())
    (a,) = dispatched(run.first)
    result = ok(a.task, out=1)
    assert [d.task.node_id for d in dispatched(run.finish(result))] == ["B"]
    before = dump_state(run.state)

    assert run.send(TaskFinished(result)) == []
    assert dump_state(run.state) == before
    # a duplicate failure of the same, already finished attempt is ignored too
    assert run.send(TaskFinished(failed(a.task))) == []
    assert dump_state(run.state) == before


def test_stale_result_of_an_older_attempt_is_ignored() -> None:
    run = Run(_retrying())
    (a0,) = dispatched(run.first)
    (a1,) = dispatched(run.finish(failed(a0.task)))
    before = dump_state(run.state)

    # attempt 0 is redelivered (as a success even) while attempt 1 is in flight
    assert run.send(TaskFinished(ok(a0.task, out=5))) == []
    assert run.send(TaskFinished(failed(a0.task))) == []
    assert dump_state(run.state) == before

    run.finish(ok(a1.task, out=9))
    assert run.finished() == RunFinished("succeeded", {"out": 9, "error": None}, None)


def test_result_of_another_run_is_ignored() -> None:
    run = Run(_retrying())
    (a,) = dispatched(run.first)
    other = ok(a.task, out=1).model_copy(update={"run_id": "run-2"})
    assert run.send(TaskFinished(other)) == []
    assert run.state.scopes[""].nodes["A"].status == "running"


# ---- error strategies --------------------------------------------------------------------


def test_fail_branch_takes_the_fail_edge_and_skips_the_source_edge() -> None:
    g = _Graph()
    _start(g)
    _code(g, "A", {}, error_strategy="fail-branch")
    _code(g, "good", {"a": ["A", "out"]})
    _end(g, "end_good", {"good": ["good", "out"]})
    g.add(
        "handler",
        "template-transform",
        template="{{ m }}",
        variables=[{"variable": "m", "value_selector": ["A", "error_message"]}],
    )
    _end(g, "end_bad", {"message": ["handler", "output"], "type": ["A", "error_type"]})
    g.link("start", "A")
    g.link("A", "good", "source")
    g.link("good", "end_good")
    g.link("A", "handler", "fail-branch")
    g.link("handler", "end_bad")
    run = Run(g.build())

    (a,) = dispatched(run.first)
    commands = run.finish(failed(a.task, "it broke", error_type="CodeNodeError"))
    assert not dispatched(commands)  # `good` is behind the skipped source edge

    scope = run.state.scopes[""]
    assert scope.nodes["A"].status == "exception"
    assert scope.nodes["A"].outputs == {
        "error_message": "it broke",
        "error_type": "CodeNodeError",
    }
    assert scope.edges["A-fail-branch-handler"] == "taken"
    assert scope.edges["A-source-good"] == "skipped"
    assert scope.nodes["good"].status == "skipped"
    assert scope.nodes["end_good"].status == "skipped"
    (finished_a,) = [e for e in emitted(commands, "node_finished") if e["node_id"] == "A"]
    assert finished_a["status"] == "exception"

    assert run.finished() == RunFinished(
        "partial-succeeded", {"message": "it broke", "type": "CodeNodeError"}, None
    )
    assert run.state.exceptions_count == 1
    assert emitted(run.log, "workflow_finished")[0]["exceptions_count"] == 1


def test_default_value_gives_defaults_and_error_fields_and_takes_normal_edges() -> None:
    g = _Graph()
    _start(g)
    _code(
        g,
        "A",
        {},
        error_strategy="default-value",
        defaults=[("out", "number", 42), ("label", "string", "fallback")],
    )
    _code(g, "B", {"a": ["A", "out"]})
    _end(
        g,
        "end",
        {"b": ["B", "out"], "label": ["A", "label"], "err": ["A", "error_message"]},
    )
    g.chain("start", "A", "B", "end")
    run = Run(g.build())

    (a,) = dispatched(run.first)
    (b,) = dispatched(run.finish(failed(a.task, "timeout", error_type="Timeout")))
    assert b.task.variables == {"A.out": 42}
    scope = run.state.scopes[""]
    assert scope.nodes["A"].status == "exception"
    assert scope.nodes["A"].outputs == {
        "out": 42,
        "label": "fallback",
        "error_message": "timeout",
        "error_type": "Timeout",
    }
    assert scope.edges["A-source-B"] == "taken"

    run.finish(ok(b.task, out=3))
    assert run.finished() == RunFinished(
        "partial-succeeded", {"b": 3, "label": "fallback", "err": "timeout"}, None
    )
    assert run.state.exceptions_count == 1


def test_failure_without_strategy_fails_the_run_and_cancels_tasks() -> None:
    g = _Graph()
    _start(g)
    _code(g, "A", {})
    _code(g, "B", {})
    _end(g, "end", {"a": ["A", "out"], "b": ["B", "out"]})
    g.link("start", "A")
    g.link("start", "B")
    g.link("A", "end")
    g.link("B", "end")
    run = Run(g.build())
    assert sorted(d.task.node_id for d in dispatched(run.first)) == ["A", "B"]

    commands = run.finish(failed(run.task("A"), "A exploded", error_type="CodeNodeError"))
    assert of_type(commands, CancelTasks) == [CancelTasks("run-1")]
    assert run.finished() == RunFinished("failed", {}, "A exploded")
    assert run.state.status == "failed" and run.state.error == "A exploded"
    assert run.state.scopes[""].nodes["A"].status == "failed"
    # B's late result changes nothing
    assert run.finish(ok(run.task("B"), out=1)) == []


# ---- branches and joins ------------------------------------------------------------------


def _branches() -> Workflow:
    g = _Graph()
    _start(g, "x")
    g.add(
        "if",
        "if-else",
        cases=[
            {
                "case_id": "true",
                "logical_operator": "and",
                "conditions": [_condition(["start", "x"], ">", "5")],
            }
        ],
    )
    _code(g, "T1", {})
    _code(g, "F1", {})
    _code(g, "F2", {"f": ["F1", "out"]})
    g.add("join", "variable-aggregator", variables=[["T1", "out"], ["F2", "out"]])
    _code(g, "after", {"v": ["join", "output"]})
    _end(g, "end", {"v": ["join", "output"], "after": ["after", "out"], "f2": ["F2", "out"]})
    g.link("start", "if")
    g.link("if", "T1", "true")
    g.link("if", "F1", "false")
    g.chain("F1", "F2")
    g.link("T1", "join")
    g.link("F2", "join")
    g.chain("join", "after", "end")
    return g.build()


def test_untaken_branch_is_skipped_recursively_and_the_join_runs_once() -> None:
    run = Run(_branches(), inputs={"x": 10})
    (t1,) = dispatched(run.first)
    assert t1.task.node_id == "T1"
    scope = run.state.scopes[""]
    assert scope.nodes["if"].outputs == {"result": True, "selected_case_id": "true"}
    assert scope.edges["if-false-F1"] == "skipped"
    assert scope.nodes["F1"].status == "skipped"
    assert scope.nodes["F2"].status == "skipped"
    assert scope.edges["F2-source-join"] == "skipped"
    assert "join" not in scope.nodes  # waits for T1

    (after,) = dispatched(run.finish(ok(t1.task, out=11)))
    assert after.task.node_id == "after"
    assert after.task.variables == {"join.output": 11}
    run.finish(ok(after.task, out=12))

    started = [e["node_id"] for e in emitted(run.log, "node_started")]
    assert started.count("join") == 1
    assert "F1" not in started and "F2" not in started
    assert run.finished() == RunFinished("succeeded", {"v": 11, "after": 12, "f2": None}, None)


def test_the_other_branch_when_the_condition_is_false() -> None:
    run = Run(_branches(), inputs={"x": 1})
    (f1,) = dispatched(run.first)
    assert f1.task.node_id == "F1"
    assert run.state.scopes[""].nodes["T1"].status == "skipped"
    (f2,) = dispatched(run.finish(ok(f1.task, out=1)))
    (after,) = dispatched(run.finish(ok(f2.task, out=2)))
    run.finish(ok(after.task, out=3))
    assert run.finished().outputs == {"v": 2, "after": 3, "f2": 2}


def test_multiple_end_nodes_merge_their_outputs() -> None:
    g = _Graph()
    _start(g, "x", "y")
    _end(g, "end1", {"a": ["start", "x"]})
    _code(g, "A", {})
    _end(g, "end2", {"b": ["start", "y"], "c": ["A", "out"]})
    g.link("start", "end1")
    g.chain("start", "A", "end2")
    run = Run(g.build(), inputs={"x": "X", "y": "Y"})
    assert not of_type(run.log, RunFinished)  # end2 still waits for A
    run.finish(ok(run.task("A"), out=5))
    assert run.finished() == RunFinished("succeeded", {"a": "X", "b": "Y", "c": 5}, None)


# ---- stop and limits ---------------------------------------------------------------------


def _one_task() -> Workflow:
    g = _Graph()
    _start(g)
    _code(g, "A", {})
    _end(g, "end", {"a": ["A", "out"]})
    g.chain("start", "A", "end")
    return g.build()


def test_stop_request_stops_the_run_and_ignores_later_results() -> None:
    run = Run(_one_task())
    (a,) = dispatched(run.first)
    commands = run.send(StopRequested("user said stop"))
    assert CancelTasks("run-1") in commands
    assert of_type(commands, RunFinished) == [RunFinished("stopped", {}, "user said stop")]
    assert run.state.status == "stopped"

    assert run.finish(ok(a.task, out=1)) == []
    assert run.send(StopRequested()) == []
    assert run.send(TimerFired("deadline")) == []
    assert run.state.status == "stopped"


def test_step_limit_stops_the_run_with_an_error_naming_the_limit() -> None:
    g = _Graph()
    _start(g)
    for name in ("t1", "t2", "t3"):
        g.add(name, "template-transform", template="x", variables=[])
    _end(g, "end", {})
    g.chain("start", "t1", "t2", "t3", "end")
    run = Run(g.build(), limits=Limits(max_steps=3))
    finished = run.finished()
    assert finished.status == "stopped"
    assert "3 steps" in (finished.error or "")
    assert CancelTasks("run-1") in run.first
    assert "t3" not in run.state.scopes[""].nodes


def test_step_limit_counts_steps_taken_across_events() -> None:
    g = _Graph()
    _start(g)
    _code(g, "A", {})
    _code(g, "B", {})
    _end(g, "end", {})
    g.chain("start", "A", "B", "end")
    run = Run(g.build(), limits=Limits(max_steps=2))
    commands = run.finish(ok(run.task("A"), out=1))
    assert not dispatched(commands)
    assert run.finished().status == "stopped"
    assert "2 steps" in (run.finished().error or "")


def test_deadline_timer_is_started_and_stops_the_run() -> None:
    run = Run(_one_task(), limits=Limits(max_run_seconds=7.5))
    assert StartTimer("deadline", 7500) in run.first
    assert run.send(TimerFired("some-other-timer")) == []  # unknown timers change nothing
    commands = run.send(TimerFired("deadline"))
    assert CancelTasks("run-1") in commands
    finished = run.finished()
    assert finished.status == "stopped"
    assert "time limit" in (finished.error or "")
    assert "7.5 s" in (finished.error or "")


# ---- iteration ---------------------------------------------------------------------------


def _iteration(
    *,
    parallel: bool = True,
    parallel_nums: int = 3,
    mode: str = "terminated",
    flatten: bool = True,
) -> Workflow:
    g = _Graph()
    _start(g, "items")
    g.add(
        "it",
        "iteration",
        title="Iterate",
        iterator_selector=["start", "items"],
        output_selector=["body", "out"],
        is_parallel=parallel,
        parallel_nums=parallel_nums,
        error_handle_mode=mode,
        flatten_output=flatten,
        start_node_id="itstart",
    )
    g.add("itstart", "iteration-start", parent="it")
    _code(g, "body", {"item": ["it", "item"], "index": ["it", "index"]}, parent="it")
    g.link("itstart", "body")
    _end(g, "end", {"out": ["it", "output"]})
    g.chain("start", "it", "end")
    return g.build()


def _times_ten(task: NodeTask) -> TaskResult:
    return ok(task, out=task.variables["it.item"] * 10)


def test_parallel_iteration_keeps_a_window_of_parallel_nums() -> None:
    run = Run(_iteration(parallel_nums=3), inputs={"items": list(range(10))})
    first = dispatched(run.first)
    assert [d.task.variables for d in first] == [{"it.item": i, "it.index": i} for i in range(3)]
    assert [d.task.scope for d in first] == ["it#0", "it#1", "it#2"]

    # finish the newest outstanding item first: completion order differs from index order
    done = 0
    while run.outstanding:
        newest = list(run.outstanding.values())[-1]
        commands = run.finish(_times_ten(newest))
        done += 1
        # one more item per finished item while items remain (3 + done <= 10)
        assert len(dispatched(commands)) == (1 if done <= 7 else 0)
        assert len(run.outstanding) <= 3
    assert run.max_outstanding == 3

    records = of_type(run.log, RecordItem)
    assert sorted(r.index for r in records) == list(range(10))
    assert [r.index for r in records] != list(range(10))  # they really came back out of order
    assert of_type(run.log, CollectItems) == [CollectItems("|it", 10)]
    assert not of_type(run.log, RunFinished)  # the node waits for the collected items

    commands = run.answer_collect()
    assert of_type(commands, RunFinished) == [
        RunFinished("succeeded", {"out": [i * 10 for i in range(10)]}, None)
    ]
    # the collect came after the last record
    log = run.log
    assert log.index(of_type(log, CollectItems)[0]) > max(log.index(r) for r in records)


def test_outputs_ordered_by_index_when_results_come_back_reversed() -> None:
    run = Run(_iteration(parallel_nums=10), inputs={"items": list(range(10))})
    tasks = [d.task for d in dispatched(run.first)]
    assert len(tasks) == 10
    for task in reversed(tasks):
        run.finish(_times_ten(task))
    # the shell may hand back the items in any order: the scheduler orders by index
    (collect,) = run.collects
    got = run.items.collect(collect.iteration)
    run.send(ItemsCollected(collect.iteration, tuple(reversed(got))))
    assert run.finished().outputs == {"out": [i * 10 for i in range(10)]}


def test_sequential_iteration_dispatches_one_item_at_a_time() -> None:
    run = Run(_iteration(parallel=False, parallel_nums=5), inputs={"items": [1, 2, 3, 4]})
    assert len(dispatched(run.first)) == 1
    seen = []
    while run.outstanding:
        (task,) = run.outstanding.values()
        seen.append(task.variables["it.index"])
        run.finish(_times_ten(task))
    assert seen == [0, 1, 2, 3]
    assert run.max_outstanding == 1
    run.answer_collect()
    assert run.finished().outputs == {"out": [10, 20, 30, 40]}


def test_iteration_defaults_to_a_window_of_ten() -> None:
    g = _iteration()
    it = g.nodes["it"]
    data = {k: v for k, v in it.data.items() if k != "parallel_nums"}
    nodes = dict(g.nodes)
    nodes["it"] = Node(it.id, it.type, it.title, data)
    workflow = Workflow("test", "workflow", "0.3.0", nodes, g.edges)
    run = Run(workflow, inputs={"items": list(range(25))})
    assert len(dispatched(run.first)) == 10


@pytest.mark.parametrize("items", [[], None])
def test_empty_or_null_iterator_gives_an_empty_output_at_once(items: Any) -> None:
    run = Run(_iteration(), inputs={"items": items})
    assert not dispatched(run.first)
    assert not of_type(run.first, CollectItems)
    assert run.finished() == RunFinished("succeeded", {"out": []}, None)


def test_non_list_iterator_fails_the_node_naming_it() -> None:
    run = Run(_iteration(), inputs={"items": "not a list"})
    assert not dispatched(run.first)
    finished = run.finished()
    assert finished.status == "failed"
    assert "it" in (finished.error or "") and "Iterate" in (finished.error or "")
    assert run.state.scopes[""].nodes["it"].status == "failed"


def test_each_item_is_recorded_and_collected_once() -> None:
    run = Run(_iteration(parallel_nums=2), inputs={"items": [5, 6, 7]})
    finished = run.drain(_times_ten)
    records = of_type(run.log, RecordItem)
    assert [(r.iteration, r.index, r.value, r.removed) for r in records] == [
        ("|it", 0, 50, False),
        ("|it", 1, 60, False),
        ("|it", 2, 70, False),
    ]
    assert len(of_type(run.log, CollectItems)) == 1
    assert finished.outputs == {"out": [50, 60, 70]}
    assert run.state.iterations == {}


def _fail_item(bad: int) -> Callable[[NodeTask], TaskResult]:
    def execute(task: NodeTask) -> TaskResult:
        if task.variables["it.item"] == bad:
            return failed(task, f"item {bad} failed", error_type="CodeNodeError")
        return _times_ten(task)

    return execute


def test_terminated_iteration_fails_after_in_flight_items_end() -> None:
    run = Run(_iteration(parallel_nums=2, mode="terminated"), inputs={"items": [1, 2, 3, 4]})
    item0 = dispatched(run.first)[0].task
    commands = run.finish(failed(item0, "item 1 failed"))
    assert not dispatched(commands)  # no new item after a failure
    assert not of_type(commands, RunFinished)  # item 1 is still in flight
    (item1,) = run.outstanding.values()
    commands = run.finish(_times_ten(item1))
    assert not dispatched(commands)
    finished = run.finished()
    assert finished.status == "failed"
    assert finished.error == "item 1 failed"
    assert not of_type(run.log, CollectItems)
    assert run.state.scopes[""].nodes["it"].status == "failed"


def test_continue_on_error_puts_null_at_the_failed_index() -> None:
    run = Run(_iteration(mode="continue-on-error"), inputs={"items": [1, 2, 3, 4]})
    finished = run.drain(_fail_item(2))
    assert finished.status == "partial-succeeded"  # as Dify's engine reports it
    assert run.state.exceptions_count == 1
    assert finished.outputs == {"out": [10, None, 30, 40]}


def test_remove_abnormal_output_drops_the_failed_index() -> None:
    run = Run(_iteration(mode="remove-abnormal-output"), inputs={"items": [1, 2, 3, 4]})
    finished = run.drain(_fail_item(3))
    assert finished.status == "partial-succeeded"
    assert run.state.exceptions_count == 1
    assert finished.outputs == {"out": [10, 20, 40]}
    assert [r.removed for r in of_type(run.log, RecordItem) if r.index == 2] == [True]


def test_flatten_output_concatenates_list_outputs() -> None:
    def pair(task: NodeTask) -> TaskResult:
        item = task.variables["it.item"]
        return ok(task, out=[item, item])

    flat = Run(_iteration(), inputs={"items": [1, 2]}).drain(pair)
    assert flat.outputs == {"out": [1, 1, 2, 2]}
    nested = Run(_iteration(flatten=False), inputs={"items": [1, 2]}).drain(pair)
    assert nested.outputs == {"out": [[1, 1], [2, 2]]}


def _size_profile(count: int) -> tuple[int, int]:
    """(max scopes, max state bytes other than the item list) over a run of `count` items."""
    items = list(range(1000, 1000 + count))
    listing = json.dumps(items, separators=(",", ":"))
    most = {"scopes": 0, "bytes": 0}

    def measure(state: RunState) -> None:
        if state.scopes[""].nodes["it"].status != "running":
            return  # once collected, the node's output holds every item, as it must
        dumped = dump_state(state).decode()
        overhead = len(dumped) - dumped.count(listing) * len(listing)
        most["scopes"] = max(most["scopes"], len(state.scopes))
        most["bytes"] = max(most["bytes"], overhead)

    run = Run(_iteration(parallel_nums=5), inputs={"items": items})
    measure(run.state)
    # newest first, so items finish out of order and the window keeps moving
    run.drain(_times_ten, pick=lambda tasks: tasks[-1], on_step=measure)
    assert run.finished().outputs == {"out": [i * 10 for i in items]}
    return most["scopes"], most["bytes"]


def test_state_size_does_not_grow_with_the_number_of_items() -> None:
    scopes_20, bytes_20 = _size_profile(20)
    scopes_400, bytes_400 = _size_profile(400)
    assert scopes_400 == scopes_20
    assert scopes_400 <= 5 + 2  # the window plus the top-level scope (and slack of one)
    # counters grow by a digit or two (index 399 vs 19); the rest must stay flat
    assert bytes_400 - bytes_20 <= 64, (bytes_20, bytes_400)


# ---- loop --------------------------------------------------------------------------------


def _loop(
    *,
    loop_count: int,
    break_at: int | None = None,
    end_at: int | None = None,
    with_task: bool = False,
) -> Workflow:
    g = _Graph()
    _start(g)
    g.add(
        "L",
        "loop",
        title="Loop",
        loop_count=loop_count,
        loop_variables=[
            {"label": "i", "var_type": "number", "value_type": "constant", "value": "0"}
        ],
        break_conditions=[] if break_at is None else [_condition(["L", "i"], "≥", str(break_at))],
        logical_operator="and",
        start_node_id="Lstart",
    )
    g.add("Lstart", "loop-start", parent="L")
    g.add(
        "inc",
        "assigner",
        parent="L",
        version="2",
        items=[
            {
                "variable_selector": ["L", "i"],
                "input_type": "constant",
                "operation": "+=",
                "value": 1,
            }
        ],
    )
    g.link("Lstart", "inc")
    last = "inc"
    if with_task:
        _code(g, "work", {"i": ["L", "i"]}, parent="L")
        g.link("inc", "work")
        last = "work"
    if end_at is not None:
        g.add(
            "check",
            "if-else",
            parent="L",
            cases=[
                {
                    "case_id": "true",
                    "logical_operator": "and",
                    "conditions": [_condition(["L", "i"], "≥", str(end_at))],
                }
            ],
        )
        g.add("stop", "loop-end", parent="L")
        g.link(last, "check")
        g.link("check", "stop", "true")
    _end(g, "end", {"i": ["L", "i"], "rounds": ["L", "loop_round"]})
    g.chain("start", "L", "end")
    return g.build()


def test_loop_break_condition_true_before_round_zero_runs_no_round() -> None:
    run = Run(_loop(loop_count=5, break_at=0))
    assert run.finished() == RunFinished("succeeded", {"i": 0, "rounds": None}, None)
    assert not emitted(run.log, "loop_next")


def test_loop_breaks_after_the_round_that_meets_the_condition() -> None:
    run = Run(_loop(loop_count=10, break_at=3))
    assert run.finished() == RunFinished("succeeded", {"i": 3, "rounds": 3}, None)
    assert [e["index"] for e in emitted(run.log, "loop_next")] == [0, 1, 2]


def test_loop_end_node_breaks_after_its_round() -> None:
    run = Run(_loop(loop_count=10, end_at=2))
    assert run.finished() == RunFinished("succeeded", {"i": 2, "rounds": 2}, None)


def test_loop_count_caps_the_rounds() -> None:
    run = Run(_loop(loop_count=4, break_at=100))
    assert run.finished() == RunFinished("succeeded", {"i": 4, "rounds": 4}, None)


def test_loop_rounds_are_sequential_and_see_the_current_variables() -> None:
    run = Run(_loop(loop_count=3, with_task=True))
    seen = []
    while run.outstanding:
        (task,) = run.outstanding.values()
        seen.append((task.scope, task.variables))
        run.finish(ok(task, out=0))
    assert seen == [("L#0", {"L.i": 1}), ("L#1", {"L.i": 2}), ("L#2", {"L.i": 3})]
    assert run.finished() == RunFinished("succeeded", {"i": 3, "rounds": 3}, None)
    assert run.state.scopes.keys() == {""}  # finished rounds are dropped


# ---- state handling ----------------------------------------------------------------------


def _mixed() -> Workflow:
    """Branches, an iteration with failures and a retry: many kinds of state."""
    g = _Graph()
    _start(g, "items", "x")
    _code(g, "A", {"x": ["start", "x"]}, retry=(1, 10))
    g.add(
        "it",
        "iteration",
        iterator_selector=["start", "items"],
        output_selector=["body", "out"],
        is_parallel=True,
        parallel_nums=2,
        error_handle_mode="continue-on-error",
        start_node_id="itstart",
    )
    g.add("itstart", "iteration-start", parent="it")
    _code(g, "body", {"item": ["it", "item"]}, parent="it")
    g.link("itstart", "body")
    _end(g, "end", {"a": ["A", "out"], "it": ["it", "output"]})
    g.link("start", "A")
    g.link("start", "it")
    g.link("A", "end")
    g.link("it", "end")
    return g.build()


def _flaky(task: NodeTask) -> TaskResult:
    if task.node_id == "A" and task.attempt == 0:
        return failed(task, "flaky")
    if task.node_id == "body" and task.variables["it.item"] == 3:
        return failed(task, "bad item")
    return ok(task, out=len(task.task_id))


def test_state_json_round_trip_at_every_step_changes_nothing() -> None:
    inputs = {"items": [1, 2, 3, 4, 5], "x": "y"}
    plain = Run(_mixed(), inputs=inputs)
    durable = Run(_mixed(), inputs=inputs, round_trip=True)
    assert plain.first == durable.first

    def pick(tasks: list[NodeTask]) -> NodeTask:
        return tasks[-1]

    while not plain.state.finished:
        before = len(plain.log)
        if plain.collects:
            plain.answer_collect()
            durable.answer_collect()
        else:
            task = pick(list(plain.outstanding.values()))
            plain.finish(_flaky(task))
            durable.finish(_flaky(durable.outstanding[task.task_id]))
        assert plain.log[before:] == durable.log[before:]
        assert dump_state(plain.state) == dump_state(durable.state)
        assert load_state(dump_state(plain.state)) == plain.state
    assert plain.finished() == durable.finished()
    assert plain.finished().outputs["it"][2] is None


def test_step_does_not_modify_the_state_it_is_given() -> None:
    run = Run(_mixed(), inputs={"items": [1, 2, 3], "x": "y"})
    while not run.state.finished:
        given = run.state
        snapshot = copy.deepcopy(given)
        if run.collects:
            run.answer_collect()
        else:
            run.finish(_flaky(next(iter(run.outstanding.values()))))
        assert given == snapshot
        assert run.state is not given


def test_start_emits_workflow_started_and_state_is_running() -> None:
    run = Run(_one_task(), inputs={})
    assert isinstance(run.first[0], Emit) and run.first[0].event == "workflow_started"
    assert run.state.status == "running"
    assert run.state.steps == 2  # start and A


# ---- more deliveries and DSL-loaded retry settings ---------------------------------------


def test_fail_branch_node_that_succeeds_takes_the_source_edge() -> None:
    g = _Graph()
    _start(g)
    _code(g, "A", {}, error_strategy="fail-branch")
    _code(g, "good", {"a": ["A", "out"]})
    _code(g, "handler", {})
    g.link("start", "A")
    g.link("A", "good")
    g.link("A", "handler", "fail-branch")
    run = Run(g.build())
    (good,) = dispatched(run.finish(ok(run.task("A"), out=1)))
    assert good.task.node_id == "good"
    assert run.state.scopes[""].nodes["handler"].status == "skipped"
    run.finish(ok(good.task, out=2))
    assert run.finished().status == "succeeded"
    assert run.state.exceptions_count == 0


def test_late_item_result_and_duplicate_collect_answer_are_ignored() -> None:
    g = _Graph()
    _start(g, "items")
    g.add(
        "it",
        "iteration",
        iterator_selector=["start", "items"],
        output_selector=["body", "out"],
        is_parallel=True,
        parallel_nums=2,
        start_node_id="itstart",
    )
    g.add("itstart", "iteration-start", parent="it")
    _code(g, "body", {"item": ["it", "item"]}, parent="it")
    g.link("itstart", "body")
    _code(g, "after", {"all": ["it", "output"]})
    g.chain("start", "it", "after")
    run = Run(g.build(), inputs={"items": [1, 2]})
    item0, item1 = (d.task for d in dispatched(run.first))
    run.finish(_times_ten(item0))
    assert run.send(TaskFinished(_times_ten(item0))) == []  # the item's scope is gone
    run.finish(_times_ten(item1))
    (collect,) = run.collects
    answer = ItemsCollected(collect.iteration, (ItemOutcome(0, 10), ItemOutcome(1, 20)))
    (after,) = dispatched(run.send(answer))
    assert after.task.variables == {"it.output": [10, 20]}
    assert run.send(answer) == []


_RETRY_YAML = """
app: {name: retry, mode: workflow}
kind: app
version: 0.3.1
workflow:
  graph:
    nodes:
    - id: start
      data: {type: start, title: Start, variables: []}
    - id: A
      data:
        type: code
        title: Flaky
        code_language: python3
        code: "def main():\\n    return {'out': 1}\\n"
        variables: []
        outputs: {out: {type: number}}
        retry_config: {retry_enabled: ENABLED, max_retries: "2", retry_interval: "500"}
    - id: end
      data: {type: end, title: End, outputs: [{variable: out, value_selector: [A, out]}]}
    edges:
    - {id: e1, source: start, target: A, sourceHandle: source}
    - {id: e2, source: A, target: end, sourceHandle: source}
"""


@pytest.mark.parametrize(("enabled", "retried"), [("true", True), ("false", False)])
def test_retry_config_from_a_dify_export(enabled: str, retried: bool) -> None:
    from fanflow.dsl.load import load_workflow

    workflow = load_workflow("retry.yml", text=_RETRY_YAML.replace("ENABLED", enabled))
    run = Run(workflow)
    (a,) = dispatched(run.first)
    commands = run.finish(failed(a.task))
    if retried:
        (again,) = dispatched(commands)
        assert (again.task.attempt, again.delay_ms) == (1, 500)
    else:
        assert not dispatched(commands)
        assert run.finished().status == "failed"
