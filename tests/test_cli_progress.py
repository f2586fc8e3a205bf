"""The progress bar `fanflow run` shows on a terminal for long iterations."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from fanflow import cli
from fanflow.scheduler import Emit


def _events(count: int) -> list[Emit]:
    base = {"scope": "", "node_id": "each", "title": "Each item"}
    events = [Emit("iteration_started", {**base, "count": count})]
    events += [Emit("iteration_next", {**base, "index": i}) for i in range(count)]
    return events


def test_a_long_iteration_shows_a_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(cli, "_err", Console(file=screen, force_terminal=True, width=100))
    progress = cli._IterationProgress()
    for event in _events(40):
        progress(event)
    progress.close()
    assert "Each item" in screen.getvalue()
    assert "/40" in screen.getvalue()


def test_no_bar_for_short_iterations_or_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for count, terminal in ((5, True), (40, False)):
        screen = io.StringIO()
        console = Console(file=screen, force_terminal=terminal, width=100)
        monkeypatch.setattr(cli, "_err", console)
        progress = cli._IterationProgress()
        for event in _events(count):
            progress(event)
        progress.close()
        assert screen.getvalue() == ""
