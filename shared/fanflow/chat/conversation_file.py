"""A conversation kept in a JSON file between `fanflow run --conversation FILE` invocations.

The file holds the conversation's id, its first turn's inputs, its turns and its
conversation variables. A missing (or empty) file starts a new conversation; each run
appends its turn and writes the file again (to a temporary file first, then renamed, so a
crash never leaves half a file).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fanflow.chat.memory import MAX_TURNS
from fanflow.errors import InputsInvalid
from fanflow.runtime import RunRequest

FILE_VERSION = 1


@dataclass
class ConversationFile:
    """One conversation on disk."""

    path: Path
    conversation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    inputs: dict[str, Any] | None = None
    turns: list[dict[str, str]] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ConversationFile:
        """The conversation in `path`; a new one when the file is missing or empty.

        Raises `InputsInvalid` naming the file for anything else it cannot read.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise InputsInvalid(f"--conversation {path}: {exc}") from exc
        if not text.strip():
            return cls(path)
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputsInvalid(f"--conversation {path}: not JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("conversation_id"), str):
            raise InputsInvalid(
                f"--conversation {path}: expected an object with a conversation_id "
                "(a file fanflow wrote)"
            )
        turns = data.get("turns") or []
        if not isinstance(turns, list) or not all(
            isinstance(t, dict)
            and isinstance(t.get("query"), str)
            and isinstance(t.get("answer"), str)
            for t in turns
        ):
            raise InputsInvalid(f"--conversation {path}: turns must be [{{query, answer}}, ...]")
        inputs = data.get("inputs")
        variables = data.get("variables") or {}
        if inputs is not None and not isinstance(inputs, dict):
            raise InputsInvalid(f"--conversation {path}: inputs must be an object")
        if not isinstance(variables, dict):
            raise InputsInvalid(f"--conversation {path}: variables must be an object")
        return cls(path, data["conversation_id"], inputs, turns, variables)

    @property
    def dialogue_count(self) -> int:
        """The number of the next turn."""
        return len(self.turns) + 1

    def history(self) -> tuple[tuple[str, str], ...]:
        """The answered turns memory may read, oldest first."""
        answered = [(t["query"], t["answer"]) for t in self.turns if t["answer"]]
        return tuple(answered[-MAX_TURNS:])

    def add_turn(self, query: str, answer: str, variables: dict[str, Any]) -> None:
        self.turns.append({"query": query, "answer": answer})
        self.variables = dict(variables)

    def save(self) -> None:
        document = {
            "version": FILE_VERSION,
            "conversation_id": self.conversation_id,
            "inputs": self.inputs,
            "variables": self.variables,
            "turns": self.turns,
        }
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", "utf-8")
        os.replace(temporary, self.path)


def continue_request(kept: ConversationFile, request: RunRequest) -> RunRequest:
    """`request` as the conversation's next turn. As in Dify, a conversation keeps its
    first turn's inputs: later inputs are ignored. The query defaults to the `query` input."""
    query = request.query
    if query is None and isinstance(request.inputs.get("query"), str):
        query = request.inputs["query"]
    if kept.inputs is None:
        kept.inputs = dict(request.inputs)
    return replace(
        request,
        inputs=kept.inputs,
        query=query or "",
        conversation_id=kept.conversation_id,
        dialogue_count=kept.dialogue_count,
        conversation_values=kept.variables,
        history=kept.history(),
    )
