"""The `code` node: run its `main` in the Python sandbox, check the result against `outputs`.

Only `code_language: python3` runs. JavaScript is refused: Node.js reserves gigabytes of
address space and dies at start under the 512 MB limit Python runs with, so it would not get
the same guarantees.

Departure from Dify: Dify's executor turns every string in the result that looks like
scientific notation ("1.5e+10") into a float; fanflow leaves strings alone. NaN and
±Infinity pass through the sandbox as in Dify's JSON round trip; the output checks judge them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fanflow.context import ExecutionContext, ExecutionOutcome, node_label
from fanflow.errors import NodeError
from fanflow.messages import NodeTask
from fanflow.nodes.outputs import check_code_outputs
from fanflow.sandbox.process import run_python
from fanflow.variables import resolve_or_none


async def run_code_node(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
    """Each declared variable becomes a keyword argument of `main` (a missing one is None)."""
    label = node_label(task)
    data = task.data
    language = data.get("code_language") or "python3"
    if language != "python3":
        raise NodeError(
            f"{label}: code_language '{language}' is not supported; use python3",
            error_type="NotSupportedError",
        )
    code = data.get("code")
    if not isinstance(code, str) or not code.strip():
        raise NodeError(f"{label}: the node has no code", error_type="CodeNodeError")
    inputs = _inputs(task, label)
    if context.code_sandbox is None:
        raise NodeError(f"{label}: this process has no code sandbox", error_type="SandboxError")
    try:
        result = await run_python(
            code,
            inputs,
            pool=context.code_sandbox,
            timeout_s=task.timeout_s or context.code_timeout_s,
            memory_mb=context.code_memory_mb,
            cpu_s=context.code_cpu_s,
            max_output_bytes=context.code_max_output_bytes,
        )
    except NodeError as exc:
        raise NodeError(f"{label}: {exc}", error_type=exc.error_type) from exc
    outputs = check_code_outputs(
        result, data.get("outputs") or {}, node_label=label, limits=context.code_limits
    )
    return ExecutionOutcome(outputs=outputs)


def _inputs(task: NodeTask, label: str) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for index, item in enumerate(task.data.get("variables") or []):
        name = item.get("variable") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise NodeError(
                f"{label}: variables[{index}] has no 'variable' name", error_type="CodeNodeError"
            )
        selector = item.get("value_selector")
        inputs[name] = resolve_or_none(task.lookup, selector) if _is_selector(selector) else None
    return inputs


def _is_selector(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) >= 2
        and all(isinstance(part, str) for part in value)
    )
