"""fanflow's `fanflow.retry` extension: exponential backoff, cap, jitter, failure reasons."""

from __future__ import annotations

import textwrap

from fanflow.dsl.load import load_workflow
from fanflow.messages import TaskResult
from fanflow.scheduler import DispatchTask, Limits, RunFinished, Scheduler, TaskFinished
from fanflow.workflow import RetryConfig

WORKFLOW = textwrap.dedent(
    """
    app: {name: retry, mode: workflow}
    kind: app
    version: 0.3.0
    workflow:
      graph:
        edges:
          - {id: e1, source: start, target: ask, sourceHandle: source}
          - {id: e2, source: ask, target: end, sourceHandle: source}
        nodes:
          - id: start
            data: {type: start, title: Start, variables: []}
          - id: ask
            data:
              type: question-classifier
              title: Ask
              query_variable_selector: [sys, user_id]
              classes: [{id: "1", name: yes}]
              model: {provider: openai, name: gpt, mode: chat}
              fanflow:
                retry:
                  max_retries: 4
                  initial_interval_ms: 1000
                  multiplier: 3
                  max_interval_ms: 5000
                  jitter: false
                  on: [5xx, 429, timeout]
          - id: end
            data: {type: end, title: End, outputs: []}
    """
)


def _failure(task, reason: str, *, retry_after_ms: int | None = None) -> TaskResult:
    return TaskResult(
        task_id=task.task_id,
        run_id=task.run_id,
        node_id=task.node_id,
        scope=task.scope,
        attempt=task.attempt,
        status="failed",
        error="upstream said no",
        reason=reason,
        retry_after_ms=retry_after_ms,
    )


def _start():
    workflow = load_workflow("retry.yml", text=WORKFLOW)
    scheduler = Scheduler(workflow)
    state, commands = scheduler.start("r1", inputs={}, system={"user_id": "u"})
    return scheduler, state, commands


def _dispatched(commands) -> DispatchTask:
    (dispatch,) = [c for c in commands if isinstance(c, DispatchTask)]
    return dispatch


def test_the_extension_is_parsed() -> None:
    retry = load_workflow("retry.yml", text=WORKFLOW).nodes["ask"].retry
    assert retry == RetryConfig(
        max_retries=4,
        retry_interval_ms=1000,
        multiplier=3.0,
        max_interval_ms=5000,
        jitter=False,
        retry_on=frozenset({"status_5xx", "status_429", "timeout"}),
        extended=True,
    )


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    scheduler, state, commands = _start()
    delays = []
    dispatch = _dispatched(commands)
    for _ in range(4):
        state, commands = scheduler.step(state, TaskFinished(_failure(dispatch.task, "status_5xx")))
        dispatch = _dispatched(commands)
        delays.append(dispatch.delay_ms)
    assert delays == [1000, 3000, 5000, 5000]
    state, commands = scheduler.step(state, TaskFinished(_failure(dispatch.task, "status_5xx")))
    (finished,) = [c for c in commands if isinstance(c, RunFinished)]
    assert finished.status == "failed"


def test_retry_after_wins_when_longer() -> None:
    scheduler, state, commands = _start()
    failure = _failure(_dispatched(commands).task, "status_429", retry_after_ms=7000)
    _, commands = scheduler.step(state, TaskFinished(failure))
    assert _dispatched(commands).delay_ms == 7000


def test_failures_outside_the_list_are_not_retried() -> None:
    scheduler, state, commands = _start()
    _, commands = scheduler.step(
        state, TaskFinished(_failure(_dispatched(commands).task, "status_4xx"))
    )
    assert not [c for c in commands if isinstance(c, DispatchTask)]
    assert [c.status for c in commands if isinstance(c, RunFinished)] == ["failed"]


def test_jitter_is_deterministic_and_within_half_to_full() -> None:
    retry = RetryConfig(max_retries=3, retry_interval_ms=1000, multiplier=2, jitter=True)
    delays = [retry.delay_ms(1, key=f"task-{i}") for i in range(50)]
    assert all(1000 <= d <= 2000 for d in delays)
    assert len(set(delays)) > 10
    assert delays == [retry.delay_ms(1, key=f"task-{i}") for i in range(50)]


def test_no_retry_waits_past_the_run_deadline() -> None:
    workflow = load_workflow("retry.yml", text=WORKFLOW)
    scheduler = Scheduler(workflow, limits=Limits(max_run_seconds=60))
    state, commands = scheduler.start("r1", inputs={}, system={"user_id": "u"})
    # an upstream asking for two days
    failure = _failure(_dispatched(commands).task, "status_429", retry_after_ms=172_800_000)
    _, commands = scheduler.step(state, TaskFinished(failure))
    assert _dispatched(commands).delay_ms == 60_000
