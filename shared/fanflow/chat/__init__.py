"""Chatflows (`app.mode: advanced-chat`): conversation turns, memory, conversation files.

`memory` is pure (the scheduler and the LLM prompts use it); `conversation_file` keeps a
conversation between `fanflow run --conversation FILE` invocations.
"""

from fanflow.chat.memory import (
    MEMORY_NODE_TYPES,
    MemoryTurn,
    history_limit,
    history_messages,
    history_text,
    window_turns,
)

__all__ = [
    "MEMORY_NODE_TYPES",
    "MemoryTurn",
    "history_limit",
    "history_messages",
    "history_text",
    "window_turns",
]
