"""Hypothesis strategies for random workflows: DAGs with branches, iterations and loops."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from fanflow.workflow import DefaultValue, Edge, Node, RetryConfig, Workflow


class _Builder:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.edges: list[Edge] = []

    def add(self, node_id: str, type_: str, data: dict[str, Any], **extra: Any) -> str:
        self.nodes[node_id] = Node(node_id, type_, node_id, {"type": type_, **data}, **extra)
        return node_id

    def link(self, source: str, target: str, handle: str = "source") -> None:
        self.edges.append(Edge(f"{source}-{handle}-{target}", source, target, handle))

    def build(self) -> Workflow:
        return Workflow("random", "workflow", "0.3.0", dict(self.nodes), tuple(self.edges))


def _task_data(draw: st.DrawFn, upstream: list[str], *, item_of: str | None = None) -> dict:
    refs = draw(st.lists(st.sampled_from(upstream), max_size=2, unique=True)) if upstream else []
    variables = [
        {"variable": f"v{i}", "value_selector": [ref, "out"]} for i, ref in enumerate(refs)
    ]
    if item_of is not None:
        variables.append({"variable": "item", "value_selector": [item_of, "item"]})
    return {
        "code_language": "python3",
        "code": "def main(**kw):\n    return {}",
        "variables": variables,
        "outputs": {"out": {"type": "number"}, "items": {"type": "array[number]"}},
        "fail_attempts": draw(st.sampled_from([0, 0, 0, 0, 0, 0, 1, 2])),
        "emit_items": draw(st.integers(0, 8)),
    }


def _error_options(draw: st.DrawFn) -> dict[str, Any]:
    strategy = draw(st.sampled_from([None, "fail-branch", "default-value"]))
    retries = draw(st.sampled_from([0, 0, 1, 2]))
    extra: dict[str, Any] = {
        "error_strategy": strategy,
        "retry": RetryConfig(max_retries=retries, retry_interval_ms=draw(st.sampled_from([0, 50]))),
    }
    if strategy == "default-value":
        extra["default_values"] = (DefaultValue("out", "number", -1),)
    return extra


def _iteration(draw: st.DrawFn, b: _Builder, node_id: str, source: str, parent: str | None) -> None:
    body_parent = {"parent_id": parent} if parent else {}
    start = f"{node_id}start"
    inner = f"{node_id}_t"
    b.add(
        node_id,
        "iteration",
        {
            "iterator_selector": [source, "items"],
            "output_selector": [inner, "out"],
            "is_parallel": draw(st.booleans()),
            "parallel_nums": draw(st.integers(1, 4)),
            "error_handle_mode": draw(
                st.sampled_from(["terminated", "continue-on-error", "remove-abnormal-output"])
            ),
            "flatten_output": draw(st.booleans()),
            "start_node_id": start,
        },
        **body_parent,
        **_error_options(draw),
    )
    b.add(start, "iteration-start", {}, parent_id=node_id)
    data = _task_data(draw, [], item_of=node_id)
    data["fail_items"] = draw(st.lists(st.integers(0, 1000), max_size=1))
    data["emit_items"] = 0
    b.add(inner, "code", data, parent_id=node_id)
    b.link(start, inner)


def _loop(draw: st.DrawFn, b: _Builder, node_id: str) -> None:
    start = f"{node_id}start"
    assign = f"{node_id}_inc"
    inner = f"{node_id}_t"
    b.add(
        node_id,
        "loop",
        {
            "loop_count": draw(st.integers(0, 4)),
            "loop_variables": [
                {"label": "i", "var_type": "number", "value_type": "constant", "value": "0"}
            ],
            "break_conditions": [
                {
                    "variable_selector": [node_id, "i"],
                    "comparison_operator": "≥",
                    "value": str(draw(st.integers(0, 5))),
                    "varType": "number",
                }
            ],
            "logical_operator": "and",
            "start_node_id": start,
        },
    )
    b.add(start, "loop-start", {}, parent_id=node_id)
    b.add(
        assign,
        "assigner",
        {
            "version": "2",
            "items": [
                {
                    "variable_selector": [node_id, "i"],
                    "input_type": "constant",
                    "operation": "+=",
                    "value": 1,
                }
            ],
        },
        parent_id=node_id,
    )
    data = _task_data(draw, [])
    data["variables"] = [{"variable": "i", "value_selector": [node_id, "i"]}]
    b.add(inner, "code", data, parent_id=node_id)
    b.link(start, assign)
    b.link(assign, inner)


@st.composite
def workflows(draw: st.DrawFn, *, max_nodes: int = 10) -> Workflow:
    """A random valid workflow whose task nodes are all `code` (for `fake_execute`)."""
    b = _Builder()
    b.add("start", "start", {"variables": []})
    producers: list[str] = []  # nodes with an `out`/`items` output
    sources: list[tuple[str, str]] = [("start", "source")]  # (node, handle) to hang nodes on
    ancestors: dict[str, set[str]] = {"start": set()}
    count = draw(st.integers(1, max_nodes))
    for i in range(count):
        kind = draw(st.sampled_from(["task", "task", "task", "branch", "iteration", "loop"]))
        parents = draw(st.lists(st.sampled_from(sources), min_size=1, max_size=2, unique=True))
        node_id = f"n{i}"
        ancestors[node_id] = set().union(*({p} | ancestors[p] for p, _ in parents))
        # only upstream nodes may be read: a parallel branch's output is order-dependent
        upstream = [p for p in producers if p in ancestors[node_id]]
        if kind == "task" or (kind == "iteration" and not upstream):
            extra = _error_options(draw)
            b.add(node_id, "code", _task_data(draw, upstream), **extra)
            producers.append(node_id)
            new_sources = [(node_id, "source")]
            if extra["error_strategy"] == "fail-branch":
                new_sources.append((node_id, "fail-branch"))
        elif kind == "branch":
            if upstream:
                condition = {
                    "variable_selector": [draw(st.sampled_from(upstream)), "out"],
                    "comparison_operator": ">",
                    "value": "500",
                    "varType": "number",
                }
            else:
                condition = {
                    "variable_selector": ["sys", "user_id"],
                    "comparison_operator": "contains",
                    "value": "u",
                    "varType": "string",
                }
            b.add(
                node_id,
                "if-else",
                {
                    "cases": [
                        {"case_id": "true", "logical_operator": "and", "conditions": [condition]}
                    ]
                },
            )
            new_sources = [(node_id, "true"), (node_id, "false")]
        elif kind == "iteration":
            _iteration(draw, b, node_id, draw(st.sampled_from(upstream)), None)
            new_sources = [(node_id, "source")]
        else:
            _loop(draw, b, node_id)
            new_sources = [(node_id, "source")]
        for parent, handle in parents:
            b.link(parent, node_id, handle)
        sources.extend(new_sources)
    outputs = [{"variable": p, "value_selector": [p, "out"]} for p in producers]
    outputs += [
        {"variable": n, "value_selector": [n, "output"]}
        for n, node in b.nodes.items()
        if node.type == "iteration"
    ]
    outputs += [
        {"variable": n, "value_selector": [n, "i"]}
        for n, node in b.nodes.items()
        if node.type == "loop"
    ]
    b.add("end", "end", {"outputs": outputs})
    targets = {e.source for e in b.edges}
    for node_id, node in b.nodes.items():
        if (
            node.parent_id is None
            and node_id not in ("end",)
            and (node_id not in targets or node.type == "if-else")
        ):
            b.link(node_id, "end", "false" if node.type == "if-else" else "source")
    return b.build()
