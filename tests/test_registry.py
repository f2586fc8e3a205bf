"""The node registry: every declared type resolves, and every other table derives from it."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fanflow.mesh.topology import Topology
from fanflow.registry import (
    NODE_TYPES,
    QUEUE_CLASSES,
    TASK_NODE_TYPES,
    NodeKind,
    NodeType,
    node_type,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(NODE_TYPES))
def test_every_declared_type_resolves(name: str) -> None:
    declared = NODE_TYPES[name]
    assert declared.name == name
    if declared.kind is NodeKind.TASK:
        assert inspect.iscoroutinefunction(declared.execute), name
        assert declared.queue_class, name
        assert declared.evaluate_ref is None
    elif declared.kind is NodeKind.INLINE:
        assert callable(declared.evaluate), name
        assert declared.execute_ref is None and declared.queue_class is None
    else:
        # containers are driven by the scheduler itself
        assert declared.evaluate_ref is None and declared.execute_ref is None
    if declared.check_ref is not None:
        problems: list[str] = []
        declared.check({}, problems)  # runs on an empty node without raising
    if declared.reads_ref is not None:
        assert list(declared.reads({})) is not None


@pytest.mark.parametrize("name", sorted(TASK_NODE_TYPES))
def test_every_task_type_is_dispatchable(name: str) -> None:
    """A task's queue class has a queue in the default topology (no KeyError at dispatch)."""
    topology = Topology(namespace="t")
    cls = topology.class_for(name)
    assert cls == QUEUE_CLASSES[name]
    assert topology.task_queue(cls) in {queue.name for queue in topology.queues()}


def test_a_bad_reference_names_the_type_and_field() -> None:
    broken = NodeType("x-test", NodeKind.TASK, execute_ref="fanflow.executors.code:nothing")
    with pytest.raises(LookupError, match=r"node type 'x-test': execute_ref .* does not resolve"):
        _ = broken.execute


def test_unknown_types_are_not_declared() -> None:
    assert node_type("knowledge-retrieval-v2") is None
    assert node_type("code") is NODE_TYPES["code"]


def test_no_node_type_table_outside_the_registry() -> None:
    """No module of the library keys a mapping by node type or lists node types in a
    collection literal: such tables derive from `fanflow.registry`."""
    names = "|".join(re.escape(name) for name in NODE_TYPES)
    table = re.compile(
        rf'"(?:{names})"\s*:\s*(?:_\w+|"[\w-]+")\s*,|[{{(\[]\s*"(?:{names})"\s*,\s*"(?:{names})"'
    )
    offenders = []
    for path in sorted((ROOT / "shared" / "fanflow").rglob("*.py")):
        if path.name == "registry.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if table.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_loading_the_registry_loads_no_executor() -> None:
    code = (
        "import sys, fanflow.registry, fanflow.dsl;"
        "heavy = [m for m in ('httpx', 'fanflow.executors.code', 'fanflow.sandbox') "
        "if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
