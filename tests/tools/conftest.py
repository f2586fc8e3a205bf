"""Tool tests: a fake service per test, and a helper that runs one tool node as a task."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fanflow.executors import ExecutionContext, execute_task
from fanflow.messages import NodeTask, TaskResult
from fanflow.tools.catalog import ToolCatalog
from fanflow.tools.config import parse_tools_config
from tests.tools.fakes import FakeService, fake_service


@pytest.fixture
def service() -> Iterator[FakeService]:
    with fake_service() as server:
        yield server


def tool_task(
    provider: str,
    tool: str,
    parameters: dict[str, Any] | None = None,
    *,
    configurations: dict[str, Any] | None = None,
    variables: dict[str, Any] | None = None,
    provider_type: str = "builtin",
    **extra: Any,
) -> NodeTask:
    return NodeTask(
        task_id="run/-/tool/0",
        run_id="run",
        node_id="tool",
        node_type="tool",
        node_title="My Tool",
        data={
            "type": "tool",
            "provider_id": provider,
            "provider_name": provider,
            "provider_type": provider_type,
            "tool_name": tool,
            "tool_parameters": {
                k: v if isinstance(v, dict) else {"type": "constant", "value": v}
                for k, v in (parameters or {}).items()
            },
            "tool_configurations": configurations or {},
            **extra,
        },
        variables=variables or {},
    )


def catalog(config: dict[str, Any]) -> ToolCatalog:
    return ToolCatalog.from_config(parse_tools_config(config, environ={}))


async def run_tool(task: NodeTask, context: ExecutionContext | None = None) -> TaskResult:
    return await execute_task(task, context or ExecutionContext())
