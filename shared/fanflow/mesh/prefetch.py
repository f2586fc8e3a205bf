"""A worker's prefetch per queue class: how many of that class's tasks it runs at once."""

from __future__ import annotations

import os

from fanflow.settings import Settings

#: a class's prefetch when neither its setting nor FANFLOW_WORKER_PREFETCH is set: I/O-bound
#: classes wait on upstreams, so many in flight; code runs on this machine's CPUs
DEFAULT_PREFETCH = {"llm": 64, "http": 64, "tool": 16}


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def prefetch_for(settings: Settings, cls: str, *, prefetch: int | None = None) -> int:
    """One class's prefetch: `prefetch` (the CLI's `--prefetch`), else the class's own
    setting (`FANFLOW_WORKER_PREFETCH_LLM`), else FANFLOW_WORKER_PREFETCH, else its default."""
    if prefetch:
        return prefetch
    own = getattr(settings, f"worker_prefetch_{cls}", None)
    if own:
        return int(own)
    if settings.worker_prefetch:
        return settings.worker_prefetch
    return DEFAULT_PREFETCH.get(cls, cpu_count())
