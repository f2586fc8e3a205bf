"""A chatflow turn's beginning and end, for every shell (embedded, the mesh's driver).

At the start a shell loads the conversation's variables and as many earlier turns as the
workflow's memory reads (`turns_to_load`); at the end it stores the answer and the
variables as the run left them (`turn_end`) — assigner writes survive to the next turn.
"""

from __future__ import annotations

from typing import Any

from fanflow.chat.memory import history_limit
from fanflow.scheduler.state import FAILED, RunState
from fanflow.store.chat_records import TurnEnd
from fanflow.workflow import Workflow

MESSAGE_NORMAL, MESSAGE_ERROR = "normal", "error"


def turns_to_load(workflow: Workflow) -> int:
    """The most earlier turns any node of the workflow reads into memory (0: none)."""
    return history_limit((node.type, node.data.get("memory")) for node in workflow.nodes.values())


def declared_variables(workflow: Workflow) -> dict[str, tuple[str, Any]]:
    """The workflow's conversation variables: name -> (value_type, default value)."""
    return {v.name: (v.value_type, v.value) for v in workflow.conversation}


def answer_of(state: RunState) -> str:
    """The turn's answer: the Answer nodes' text (what was streamed, also when stopped)."""
    answer = state.outputs.get("answer") if state.outputs else None
    if isinstance(answer, str):
        return answer
    return state.answer or ""


def message_status(run_status: str) -> str:
    return MESSAGE_ERROR if run_status == FAILED else MESSAGE_NORMAL


def turn_end(state: RunState, *, elapsed_time: float | None) -> TurnEnd:
    """What the run's last transaction writes for its turn."""
    return TurnEnd(
        conversation_id=str(state.system.get("conversation_id", "")),
        answer=answer_of(state),
        status=message_status(state.status),
        error=state.error,
        total_tokens=state.total_tokens,
        elapsed_time=elapsed_time,
        variables={
            name: (state.conversation_types.get(name, "string"), value)
            for name, value in state.conversation.items()
        },
    )


_SCALARS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
}


def value_type_error(value_type: str, value: Any) -> str | None:
    """Why `value` cannot be a conversation variable of `value_type` (None: it can)."""

    def fits(kind: str, item: Any) -> bool:
        if kind == "any":
            return True
        types = _SCALARS.get(kind)
        if types is None:
            return True  # a type fanflow does not know: Dify's to judge, not ours
        if kind == "number" and isinstance(item, bool):
            return False
        return isinstance(item, types)

    if value_type.startswith("array[") and value_type.endswith("]"):
        kind = value_type[len("array[") : -1]
        if not isinstance(value, list):
            return f"expected {value_type}, got {type(value).__name__}"
        bad = next((item for item in value if not fits(kind, item)), None)
        if bad is not None:
            return f"expected {value_type}, got an item {bad!r}"
        return None
    if not fits(value_type, value):
        return f"expected {value_type}, got {type(value).__name__}"
    return None
