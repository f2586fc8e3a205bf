"""What every shell does before the scheduler's first step: inputs, system variables, env."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fanflow.nodes import prepare_inputs
from fanflow.workflow import Workflow


@dataclass(frozen=True)
class RunRequest:
    """A request to run a workflow, as the CLI or the HTTP API received it."""

    inputs: Mapping[str, Any] = field(default_factory=dict)
    user: str = "fanflow"
    query: str | None = None
    app_id: str = "00000000-0000-0000-0000-000000000000"
    workflow_id: str = "00000000-0000-0000-0000-000000000000"
    files: tuple[Any, ...] = ()
    #: a chatflow turn of an existing conversation: its id (else one is derived from the
    #: run id), this turn's number, the variables' stored values (declared names only; the
    #: others keep their defaults) and the earlier turns (query, answer), oldest first
    conversation_id: str | None = None
    dialogue_count: int = 1
    conversation_values: Mapping[str, Any] = field(default_factory=dict)
    history: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RunSetup:
    """Everything `Scheduler.start` needs besides the run id."""

    inputs: dict[str, Any]
    system: dict[str, Any]
    environment: dict[str, Any] = field(default_factory=dict)
    conversation: dict[str, Any] = field(default_factory=dict)
    conversation_types: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, str]] = field(default_factory=list)


def prepare_run(
    workflow: Workflow, request: RunRequest, *, run_id: str, now_s: float | None = None
) -> RunSetup:
    """Validate inputs against the start node and build the run's variables.

    Raises `InputsInvalid` naming the input that is wrong.
    """
    start = workflow.start_node()
    graph_document = workflow.extra.get("kind") == "graph"
    if graph_document:
        # graphon's own graph documents take inputs as given, also readable as sys.<name>
        inputs = dict(request.inputs)
    else:
        inputs = prepare_inputs(list(start.data.get("variables") or []), dict(request.inputs))
    system: dict[str, Any] = {
        "user_id": request.user,
        "app_id": request.app_id,
        "workflow_id": request.workflow_id,
        "workflow_run_id": run_id,
        "timestamp": int(now_s if now_s is not None else time.time()),
        "files": list(request.files),
    }
    if graph_document:
        system = {**inputs, **system}
    if workflow.mode == "advanced-chat":
        query = request.query
        if query is None and isinstance(inputs.get("query"), str):
            query = inputs["query"]
        system.update(
            {
                "query": query or "",
                "conversation_id": request.conversation_id
                or str(uuid.uuid5(uuid.NAMESPACE_URL, run_id)),
                "dialogue_count": request.dialogue_count,
            }
        )
    conversation = {v.name: v.value for v in workflow.conversation}
    for name, value in request.conversation_values.items():
        if name in conversation:
            conversation[name] = value
    return RunSetup(
        inputs=inputs,
        system=system,
        environment={v.name: v.value for v in workflow.environment},
        conversation=conversation,
        conversation_types={v.name: v.value_type for v in workflow.conversation},
        history=[{"query": query, "answer": answer} for query, answer in request.history],
    )
