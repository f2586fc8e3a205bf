"""A worker's prefetch per class: I/O-bound classes high, code near the CPU count."""

from __future__ import annotations

import os

import pytest

from fanflow.mesh.prefetch import DEFAULT_PREFETCH, cpu_count, prefetch_for
from fanflow.settings import Settings


@pytest.fixture(autouse=True)
def _no_prefetch_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FANFLOW_WORKER_PREFETCH"):
            monkeypatch.delenv(name)


def test_defaults_fit_the_work() -> None:
    settings = Settings()
    assert prefetch_for(settings, "llm") == prefetch_for(settings, "http") == 64
    assert prefetch_for(settings, "tool") == DEFAULT_PREFETCH["tool"]
    assert prefetch_for(settings, "code") == cpu_count() >= 1


def test_a_class_setting_beats_the_global_one_and_the_cli_beats_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FANFLOW_WORKER_PREFETCH", "8")
    monkeypatch.setenv("FANFLOW_WORKER_PREFETCH_LLM", "128")
    monkeypatch.setenv("FANFLOW_WORKER_PREFETCH_CODE", "2")
    settings = Settings()
    assert [prefetch_for(settings, c) for c in ("llm", "code", "http")] == [128, 2, 8]
    assert prefetch_for(settings, "llm", prefetch=3) == 3


def test_a_prefetch_below_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FANFLOW_WORKER_PREFETCH_CODE", "0")
    with pytest.raises(ValueError, match="worker_prefetch_code"):
        Settings()
