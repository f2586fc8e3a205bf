"""One exception tree for fanflow; every error a caller may catch derives from FanflowError."""

from __future__ import annotations

from dataclasses import dataclass


class FanflowError(Exception):
    """Root of every fanflow error."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow file, located by node (when there is one)."""

    message: str
    node_id: str | None = None
    node_title: str | None = None

    def __str__(self) -> str:
        if self.node_id is None:
            return self.message
        title = f" ({self.node_title})" if self.node_title else ""
        return f"{self.message} at node {self.node_id}{title}"


class WorkflowInvalid(FanflowError):
    """The workflow file cannot run; `problems` lists everything found, all at once."""

    def __init__(self, problems: list[Problem], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{where}invalid workflow ({len(self.problems)} problem(s)):\n{lines}")


class InputsInvalid(FanflowError):
    """The inputs given to a run do not match the start node's variables."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        self.variable = variable
        super().__init__(message)


class DecodeError(FanflowError):
    """A message or stored state could not be decoded; the text says what was wrong."""


class NodeError(FanflowError):
    """A node failed while running; the scheduler applies its error strategy.

    `error_type` is the short class name Dify reports (e.g. ``CodeNodeError``).
    """

    def __init__(self, message: str, *, error_type: str = "NodeError") -> None:
        self.error_type = error_type
        super().__init__(message)
