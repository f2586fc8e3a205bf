"""Conversation memory: which earlier turns a node sees, and how they read in a prompt.

As in Dify: a turn is the user's query and the chatflow's answer; turns without an answer
are left out (the store does that). An `llm` node's `memory.window` (`enabled`, `size`)
keeps the last `size` turns when enabled, else up to 500; parameter-extractor and
question-classifier nodes take `window.size` whenever a window is given. Chat models get
the turns as alternating user/assistant messages, between the node's own prompt messages
and the query; completion prompts and the extractor/classifier prompts get them as text,
one `Prefix: content` line per message (`Human`/`Assistant` unless `role_prefix` says
otherwise). Dify also prunes the turns to the tokens the model has left; fanflow cannot
count a model's tokens and sends the whole window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fanflow.registry import LLM_NODE_TYPES

#: nodes whose `memory` reads the conversation's earlier turns: those that call a model
MEMORY_NODE_TYPES = LLM_NODE_TYPES
#: the most turns Dify ever reads into memory
MAX_TURNS = 500
HUMAN_PREFIX, ASSISTANT_PREFIX = "Human", "Assistant"


#: one earlier turn: `{"query": ..., "answer": ...}`
MemoryTurn = Mapping[str, str]


def window_turns(node_type: str, memory: Any) -> int:
    """How many of the latest turns a node with this `memory` config reads (0: none)."""
    if node_type not in MEMORY_NODE_TYPES or not isinstance(memory, Mapping):
        return 0
    window = memory.get("window")
    window = window if isinstance(window, Mapping) else {}
    size = _positive_int(window.get("size"))
    if node_type == "llm":
        return min(size, MAX_TURNS) if window.get("enabled") and size else MAX_TURNS
    if not window:
        return 0
    return min(size, MAX_TURNS) if size else MAX_TURNS


def history_limit(nodes: Iterable[tuple[str, Any]]) -> int:
    """The most turns any of the `(node_type, memory)` pairs reads: what to load."""
    return max((window_turns(node_type, memory) for node_type, memory in nodes), default=0)


def latest(turns: Sequence[MemoryTurn], count: int) -> list[dict[str, str]]:
    """The last `count` turns, oldest first."""
    chosen = turns[-count:] if count > 0 else ()
    return [{"query": t["query"], "answer": t["answer"]} for t in chosen]


def history_messages(turns: Sequence[MemoryTurn]) -> list[dict[str, str]]:
    """Chat messages: each turn's query as a user message, its answer as an assistant one."""
    messages: list[dict[str, str]] = []
    for turn in turns:
        messages.append({"role": "user", "content": turn["query"]})
        messages.append({"role": "assistant", "content": turn["answer"]})
    return messages


def history_text(
    turns: Sequence[MemoryTurn],
    *,
    human_prefix: str = HUMAN_PREFIX,
    assistant_prefix: str = ASSISTANT_PREFIX,
) -> str:
    """The turns as lines `Human: query` / `Assistant: answer`, joined by newlines."""
    lines: list[str] = []
    for turn in turns:
        lines.append(f"{human_prefix}: {turn['query']}")
        lines.append(f"{assistant_prefix}: {turn['answer']}")
    return "\n".join(lines)


_HISTORY_SECTION = """
The conversation so far, oldest first, as context for the current text:
<histories>
{histories}
</histories>"""


def with_history_section(
    messages: list[dict[str, Any]], turns: Sequence[MemoryTurn]
) -> list[dict[str, Any]]:
    """A classifier's or extractor's prompt with the turns (as `history_text`) added to its
    system message, or to its one prompt (completion models). Unchanged without turns."""
    if not turns or not messages:
        return messages
    section = _HISTORY_SECTION.format(histories=history_text(turns))
    target = next((i for i, m in enumerate(messages) if m.get("role") == "system"), 0)
    changed = [dict(m) for m in messages]
    changed[target]["content"] = f"{changed[target]['content']}{section}"
    return changed


def _positive_int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return max(number, 0)
