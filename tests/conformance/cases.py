"""Dify's own engine cases (`cases.jsonl`), and which of them fanflow can run today."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fanflow.workflow import SUPPORTED_NODE_TYPES, TASK_NODE_TYPES

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "dify" / "fixtures"
#: task node types that run for real here; the others need a mocked LLM answer
EXECUTABLE_TASK_TYPES = frozenset({"code", "http-request"})


@dataclass(frozen=True)
class Case:
    line: int
    fixture: str
    inputs: dict[str, Any]
    query: str | None
    expected_outputs: Any
    expected_status: str
    exact_outputs: bool
    notes: str
    mocks: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.line:02d}-{self.fixture.removesuffix('.yml')}"


def load_cases() -> list[Case]:
    cases = []
    with (FIXTURES / "cases.jsonl").open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            raw = json.loads(line)
            cases.append(
                Case(
                    line=number,
                    fixture=raw["fixture"],
                    inputs=raw.get("inputs") or {},
                    query=raw.get("query"),
                    expected_outputs=raw.get("expected_outputs"),
                    expected_status=raw["expected_status"],
                    exact_outputs=bool(raw.get("exact_outputs")),
                    notes=raw.get("notes", ""),
                    mocks=raw.get("mocks") or {},
                )
            )
    return cases


def manifest() -> dict[str, dict[str, Any]]:
    entries = json.loads((FIXTURES / "fixtures_manifest.json").read_text(encoding="utf-8"))
    return {entry["file"]: entry for entry in entries}


def why_not_runnable(case: Case) -> str | None:
    """None when fanflow runs this case today, else the reason it cannot."""
    entry = manifest().get(case.fixture)
    if entry is None:
        return "fixture missing from the manifest"
    if case.expected_status not in ("succeeded", "failed", "partial-succeeded", "stopped"):
        return f"an import-only case ({case.expected_status})"
    if "<PROPERTY" in json.dumps(case.inputs):
        return "a property case (run by test_property_cases)"
    types = set(entry["node_types"])
    unsupported = types - SUPPORTED_NODE_TYPES
    if unsupported:
        return f"uses unsupported node types {sorted(unsupported)}"
    needs_upstream = (types & TASK_NODE_TYPES) - EXECUTABLE_TASK_TYPES
    if needs_upstream:
        return f"needs a mocked LLM answer for {sorted(needs_upstream)}"
    if "http-request" in types and (
        case.mocks.get("mode") != "http_fixture" or case.mocks.get("http") is not None
    ):
        # the recorded-response cases answer for https://sample.invalid/..., which no real
        # client reaches; the cases without a recording expect the request to fail
        return "needs a recorded HTTP response"
    return None


def outputs_match(actual: Any, expected: Any, *, exact: bool) -> bool:
    """Upstream's comparison: Python `==` (1 == 1.0); extra keys allowed unless exact."""
    if expected is None:
        return True
    if exact or not isinstance(expected, dict) or not isinstance(actual, dict):
        return actual == expected
    return all(key in actual and actual[key] == value for key, value in expected.items())
