"""A warm code sandbox per test module (real zygotes in real namespaces)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fanflow.sandbox.pool import SandboxPool


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxPool]:
    with SandboxPool(size=2) as pool:
        yield pool
