"""Race joins in the pure scheduler: the loser is stopped and cancelled by id, its late
result is ignored, and a redrive after a later failure does not run it again."""

from __future__ import annotations

import textwrap

from fanflow.dsl.load import parse_workflow
from fanflow.kernel import start_run
from fanflow.messages import NodeTask, TaskResult
from fanflow.runtime import RunSetup
from fanflow.scheduler import (
    CancelTask,
    Command,
    DispatchTask,
    Emit,
    RunFinished,
    Scheduler,
    TaskFinished,
)

CODE = 'code_language: python3, code: "def main(): return {}", variables: [], outputs: {x: {type: string}}'
RACE = textwrap.dedent(
    f"""
    app: {{name: race, mode: workflow}}
    kind: app
    version: 0.3.0
    workflow:
      graph:
        edges:
          - {{id: e1, source: start, target: fast}}
          - {{id: e2, source: start, target: slow}}
          - {{id: e3, source: fast, target: first}}
          - {{id: e4, source: slow, target: first}}
          - {{id: e5, source: first, target: after}}
          - {{id: e6, source: after, target: end}}
        nodes:
          - {{id: start, data: {{type: start, title: Start, variables: []}}}}
          - {{id: fast, data: {{type: code, title: Fast, {CODE}}}}}
          - {{id: slow, data: {{type: code, title: Slow, {CODE}}}}}
          - id: first
            data:
              type: variable-aggregator
              title: First
              output_type: string
              variables: [[fast, x], [slow, x]]
              fanflow: {{join: race}}
          - {{id: after, data: {{type: code, title: After, {CODE}}}}}
          - id: end
            data: {{type: end, title: End, outputs: [{{variable: w, value_selector: [first, output]}}]}}
    """
)


def _result(task: NodeTask, *, ok: bool = True) -> TaskFinished:
    return TaskFinished(
        TaskResult(
            task_id=task.task_id,
            run_id=task.run_id,
            node_id=task.node_id,
            scope=task.scope,
            attempt=task.attempt,
            status="succeeded" if ok else "failed",
            outputs={"x": task.node_id} if ok else {},
            error=None if ok else "after failed",
        )
    )


def _tasks(commands: list[Command]) -> dict[str, NodeTask]:
    return {c.task.node_id: c.task for c in commands if isinstance(c, DispatchTask)}


def test_the_first_branch_wins_and_the_other_is_cancelled() -> None:
    scheduler = Scheduler(parse_workflow(RACE))
    state, commands = start_run(scheduler, "r", RunSetup(inputs={}, system={"user_id": "u"}))
    first = _tasks(commands)
    assert set(first) == {"fast", "slow"}
    commands = scheduler.advance(state, _result(first["fast"]))
    assert [c for c in commands if isinstance(c, CancelTask)] == [
        CancelTask("r", (first["slow"].task_id,))
    ]
    stopped = [
        c.data
        for c in commands
        if isinstance(c, Emit) and c.event == "node_finished" and c.data["node_id"] == "slow"
    ]
    assert stopped and stopped[0]["status"] == "stopped"
    after = _tasks(commands)["after"]
    # the loser's late result changes nothing
    assert scheduler.advance(state, _result(first["slow"])) == []
    # `after` fails: the run fails; a redrive runs `after` again, not the loser
    commands = scheduler.advance(state, _result(after, ok=False))
    assert any(isinstance(c, RunFinished) and c.status == "failed" for c in commands)
    commands = scheduler.redrive(state, {})
    assert set(_tasks(commands)) == {"after"}
    commands = scheduler.advance(state, _result(_tasks(commands)["after"]))
    (finished,) = [c for c in commands if isinstance(c, RunFinished)]
    assert finished.status == "succeeded" and finished.outputs == {"w": "fast"}
