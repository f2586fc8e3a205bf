"""The `code` executor and the executor registry, through `execute_task` (real sandbox)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from fanflow.errors import NodeError
from fanflow.executors import ExecutionContext, ExecutionOutcome, base, execute_task, executor_for
from fanflow.messages import NodeTask, TaskResult
from fanflow.registry import TASK_NODE_TYPES
from fanflow.sandbox.pool import SandboxPool


@pytest.fixture
def context(sandbox: SandboxPool) -> ExecutionContext:
    return ExecutionContext(code_sandbox=sandbox)


def code_task(
    code: str,
    *,
    variables: list[dict[str, Any]] | None = None,
    outputs: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    language: str = "python3",
    timeout_s: float | None = None,
) -> NodeTask:
    return NodeTask(
        task_id="run-1/-/code1/0",
        run_id="run-1",
        node_id="code1",
        node_type="code",
        node_title="Compute",
        data={
            "type": "code",
            "code_language": language,
            "code": code,
            "variables": variables or [],
            "outputs": outputs if outputs is not None else {"result": {"type": "number"}},
        },
        variables=values or {},
        timeout_s=timeout_s,
    )


async def test_code_node_succeeds_with_checked_outputs(context: ExecutionContext) -> None:
    task = code_task(
        "def main(a, b, name, missing):\n"
        "    print('debugging output')\n"
        "    return {'total': a + b, 'greeting': f'hi {name}', 'missing': missing}\n",
        variables=[
            {"variable": "a", "value_selector": ["start", "a"]},
            {"variable": "b", "value_selector": ["llm", "usage", "tokens"]},
            {"variable": "name", "value_selector": ["sys", "user_id"]},
            {"variable": "missing", "value_selector": ["nowhere", "x"]},
        ],
        outputs={
            "total": {"type": "number"},
            "greeting": {"type": "string"},
            "missing": {"type": "string"},
        },
        values={"start.a": 40, "llm.usage": {"tokens": 2}, "sys.user_id": "ada"},
    )
    result = await execute_task(task, context)
    assert isinstance(result, TaskResult)
    assert result.status == "succeeded", result.error
    assert result.outputs == {"total": 42, "greeting": "hi ada", "missing": None}
    assert (result.task_id, result.run_id, result.node_id) == ("run-1/-/code1/0", "run-1", "code1")
    assert result.elapsed_s > 0


async def test_an_exception_fails_the_node_with_the_users_line(context: ExecutionContext) -> None:
    task = code_task("def main():\n    items = []\n    return {'result': items[3]}\n")
    result = await execute_task(task, context)
    assert result.status == "failed"
    assert result.error_type == "CodeExecutionError"
    assert result.retryable is True  # the node's retry_config decides
    assert result.error is not None
    assert result.error.startswith("code1 (Compute): IndexError: list index out of range")
    assert "(line 3, in main)" in result.error


@pytest.mark.parametrize(
    ("returned", "error_type", "fragment"),
    [
        ("{}", "OutputValidationError", "'result' is missing"),
        ("{'result': 'seven'}", "OutputValidationError", "'result' must be a number"),
        ("{'result': 1, 'extra': 2}", "CodeNodeError", "'extra'"),
    ],
)
async def test_declared_outputs_are_enforced(
    returned: str, error_type: str, fragment: str, context: ExecutionContext
) -> None:
    result = await execute_task(code_task(f"def main():\n    return {returned}\n"), context)
    assert result.status == "failed"
    assert result.error_type == error_type
    assert result.error is not None and fragment in result.error
    assert result.error.startswith("code1 (Compute): ")


async def test_the_tasks_timeout_wins_over_the_context_default(context: ExecutionContext) -> None:
    task = code_task("def main():\n    while True:\n        pass\n", timeout_s=0.5)
    result = await execute_task(task, replace(context, code_timeout_s=60))
    assert result.status == "failed"
    assert result.error_type == "TimeoutError"
    assert result.error == "code1 (Compute): code timed out after 0.5 s"
    assert result.elapsed_s < 3


async def test_the_memory_limit_comes_from_the_context(context: ExecutionContext) -> None:
    task = code_task("def main():\n    x = 'a' * (300 * 1024 * 1024)\n    return {'result': 1}\n")
    result = await execute_task(task, replace(context, code_memory_mb=128))
    assert result.error_type == "MemoryError"
    assert result.error == (
        "code1 (Compute): code exceeded the memory limit of 128 MB (line 2, in main)"
    )


async def test_javascript_is_refused(context: ExecutionContext) -> None:
    task = code_task("function main() { return {result: 1} }", language="javascript")
    result = await execute_task(task, context)
    assert result.status == "failed"
    assert result.error == (
        "code1 (Compute): code_language 'javascript' is not supported; use python3"
    )
    assert result.retryable is False


def test_every_task_node_type_has_an_executor() -> None:
    assert {t for t in TASK_NODE_TYPES if base.executor_for(t) is None} == set()


@pytest.mark.parametrize("node_type", ["knowledge-retrieval-v2", "datasource", "human-input"])
async def test_task_types_fanflow_does_not_declare_fail_without_retry(node_type: str) -> None:
    task = NodeTask(
        task_id="t", run_id="r", node_id="n1", node_type=node_type, node_title="Ask", data={}
    )
    result = await execute_task(task, context)
    assert result.status == "failed"
    assert result.error == (
        f"n1 (Ask): node type '{node_type}' is not supported by fanflow's executors"
    )
    assert result.error_type == "NotSupportedError"
    assert result.retryable is False


async def test_a_node_type_that_is_no_task_fails_without_retry(context: ExecutionContext) -> None:
    task = NodeTask(task_id="t", run_id="r", node_id="n1", node_type="if-else", data={})
    result = await execute_task(task, context)
    assert result.status == "failed" and result.retryable is False
    assert result.error is not None and "'if-else' is not a task node" in result.error


async def test_an_executor_bug_becomes_a_failed_result(
    monkeypatch: pytest.MonkeyPatch, context: ExecutionContext
) -> None:
    async def broken(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
        raise KeyError("oops")

    async def failing(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
        raise NodeError("upstream said no", error_type="HTTPError")

    executors = {"test-broken": broken, "test-failing": failing}
    monkeypatch.setattr(base, "executor_for", executors.get)
    task = NodeTask(task_id="t", run_id="r", node_id="n1", node_type="test-broken", data={})
    result = await execute_task(task, context)
    assert (result.status, result.error_type) == ("failed", "InternalError")
    assert result.error == "n1: internal error in fanflow: KeyError: 'oops'"
    task = task.model_copy(update={"node_type": "test-failing"})
    result = await execute_task(task, context)
    assert (result.error, result.error_type, result.retryable) == (
        "upstream said no",
        "HTTPError",
        True,
    )


def test_the_code_executor_is_registered() -> None:
    assert executor_for("code") is not None
