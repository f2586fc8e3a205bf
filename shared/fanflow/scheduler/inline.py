"""Nodes the scheduler evaluates itself: cheap, pure, no I/O.

Each evaluator takes `(step, scope, node)` and returns the node's outputs and the handle of
the edges to take; `fanflow.registry` names which evaluator serves which node type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fanflow.errors import NodeError
from fanflow.nodes import (
    aggregate,
    evaluate_cases,
    operate_list,
    plan_assignments,
    render_template,
    template_variables,
)
from fanflow.registry import node_type
from fanflow.scheduler.lookup import scope_chain
from fanflow.scheduler.state import Scope, frame_key
from fanflow.variables import Selector, render, resolve_or_none
from fanflow.vocabulary import EventName
from fanflow.workflow import Node

if TYPE_CHECKING:
    from fanflow.scheduler.scheduler import _Step

Outcome = tuple[dict[str, Any], str | None]


def evaluate(step: _Step, scope: Scope, node: Node) -> Outcome:
    """Run an inline node; returns its outputs and the handle of the edges to take."""
    declared = node_type(node.type)
    handler: Callable[[_Step, Scope, Node], Outcome] | None = (
        declared.evaluate if declared is not None else None
    )
    if handler is None:
        raise NodeError(
            f"node type '{node.type}' is not supported by fanflow", error_type="UnsupportedNode"
        )
    return handler(step, scope, node)


def start(step: _Step, scope: Scope, node: Node) -> Outcome:
    return (dict(step.state.inputs) if scope.key == "" else {}), None


def container_start(step: _Step, scope: Scope, node: Node) -> Outcome:
    return {}, None


def end(step: _Step, scope: Scope, node: Node) -> Outcome:
    lookup = step.lookup(scope.key)
    outputs = {
        item["variable"]: resolve_or_none(lookup, item.get("value_selector") or [])
        for item in node.data.get("outputs") or []
    }
    step.respond(scope, outputs=outputs)
    return outputs, None


def answer(step: _Step, scope: Scope, node: Node) -> Outcome:
    text = render(str(node.data.get("answer") or ""), step.lookup(scope.key), markdown=True)
    step.respond(scope, answer=text)
    step.emit(EventName.TEXT_CHUNK, scope, node, text=text)
    return {"answer": text, "files": []}, None


def if_else(step: _Step, scope: Scope, node: Node) -> Outcome:
    case_id = evaluate_cases(node.data, step.lookup(scope.key))
    return {"result": case_id != "false", "selected_case_id": case_id}, case_id


def template(step: _Step, scope: Scope, node: Node) -> Outcome:
    variables = template_variables(node.data, step.lookup(scope.key))
    return {"output": render_template(str(node.data.get("template") or ""), variables)}, None


def aggregator(step: _Step, scope: Scope, node: Node) -> Outcome:
    return aggregate(node.data, step.lookup(scope.key)), None


def list_operator(step: _Step, scope: Scope, node: Node) -> Outcome:
    return operate_list(node.data, step.lookup(scope.key)), None


def loop_end(step: _Step, scope: Scope, node: Node) -> Outcome:
    scope.loop_ended = True
    return {}, None


def assigner(step: _Step, scope: Scope, node: Node) -> Outcome:
    state = step.state
    loops = _enclosing_loops(step, scope)
    types: dict[Selector, str] = {
        ("conversation", k): v for k, v in state.conversation_types.items()
    }
    for loop_id, key in loops.items():
        types.update({(loop_id, label): t for label, t in state.loops[key].types.items()})
    version = 2 if str(node.data.get("version", "1")) == "2" or "items" in node.data else 1
    writes = plan_assignments(node.data, step.lookup(scope.key), version=version, types=types)
    for selector, value in writes:
        head, name = selector[0], selector[1]
        if head == "conversation" and name in state.conversation:
            state.conversation[name] = value
        elif head in loops and name in state.loops[loops[head]].variables:
            state.loops[loops[head]].variables[name] = value
        else:
            raise NodeError(
                f"cannot assign to '{'.'.join(selector)}': only conversation variables and "
                "loop variables of an enclosing loop can be assigned",
                error_type="VariableOperatorNodeError",
            )
    return {}, None


def _enclosing_loops(step: _Step, scope: Scope) -> dict[str, str]:
    """Loop node id -> loop frame key, for every loop enclosing `scope`."""
    result: dict[str, str] = {}
    for each in scope_chain(step.state, scope.key):
        if each.container is not None and step.workflow.nodes[each.container].type == "loop":
            result.setdefault(each.container, frame_key(each.parent or "", each.container))
    return result
