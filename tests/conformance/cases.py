"""Dify's own engine cases (`cases.jsonl`), and which of them fanflow can run today."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from fanflow.registry import SUPPORTED_NODE_TYPES, TASK_NODE_TYPES
from fanflow.tools.catalog import BUILTIN_PROVIDERS, provider_key
from tests.conformance.expected_outputs import EXPECTED_OUTPUTS

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "dify" / "fixtures"
#: task node types that run for real here; the others need a mocked LLM answer
#: (tool: the fixtures' tools are built-ins without network, e.g. time's current_time)
EXECUTABLE_TASK_TYPES = frozenset({"code", "http-request", "tool"})
#: task node types whose mocked answers `fanflow mock-llm` gives (test_conformance_llm.py)
LLM_TASK_TYPES = frozenset({"llm"})
#: the status a mocked LLM error is answered with: a 4xx, which fanflow never retries
MOCK_ERROR_STATUS = 400
#: graph changes upstream's test makes before running, by the `mocks.note` that says so
GRAPH_PATCHES: dict[str, dict[str, dict[str, Any]]] = {
    "Test mutates the loaded graph: llm node error_strategy=default-value, default_value=[{key: "
    'text, type: string, value: "fallback response"}]': {
        "llm": {
            "error_strategy": "default-value",
            "default_value": [{"key": "text", "type": "string", "value": "fallback response"}],
        }
    }
}
#: `patched` mocks: "node ID streams [chunks...]" in the note; the output is the chunks joined
_PATCHED_STREAM = re.compile(r"node (\S+) streams (\[.*?\])")
#: `mocks.note` "delay 0.1 s on NODE"
_DELAY = re.compile(r"delay ([0-9.]+) s on (\S+)")
#: `Case.outputs_source` of an expectation taken from the case's own line
FROM_CASES_FILE = "cases.jsonl"


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
    #: where `expected_outputs` comes from: the case's line, or `expected_outputs.py`
    outputs_source: str = FROM_CASES_FILE
    #: why fanflow's outputs differ from Dify's here, if they do (`expected_outputs.py`)
    difference: str | None = None

    @property
    def id(self) -> str:
        return case_id(self.line, self.fixture)

    @property
    def marks(self) -> list[pytest.MarkDecorator]:
        """xfail (strict) for a known difference from Dify, named in `expected_outputs.py`."""
        return [pytest.mark.xfail(reason=self.difference, strict=True)] if self.difference else []


def case_id(line: int, fixture: str) -> str:
    return f"{line:02d}-{fixture.removesuffix('.yml')}"


def load_cases() -> list[Case]:
    """The cases, with `expected_outputs.py` filling in outputs their line leaves unstated."""
    cases = []
    unused = set(EXPECTED_OUTPUTS)
    with (FIXTURES / "cases.jsonl").open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            raw = json.loads(line)
            outputs = raw.get("expected_outputs")
            source, difference = FROM_CASES_FILE, None
            expected = EXPECTED_OUTPUTS.get(case_id(number, raw["fixture"]))
            if expected is not None:
                unused.discard(case_id(number, raw["fixture"]))
                if outputs not in (None, {}):
                    raise ValueError(
                        f"expected_outputs.py: line {number} of cases.jsonl states its "
                        f"outputs ({outputs!r}); the table only fills in missing ones"
                    )
                outputs, source, difference = expected.outputs, expected.source, expected.difference
            cases.append(
                Case(
                    line=number,
                    fixture=raw["fixture"],
                    inputs=raw.get("inputs") or {},
                    query=raw.get("query"),
                    expected_outputs=outputs,
                    expected_status=raw["expected_status"],
                    exact_outputs=bool(raw.get("exact_outputs")),
                    notes=raw.get("notes", ""),
                    mocks=raw.get("mocks") or {},
                    outputs_source=source,
                    difference=difference,
                )
            )
    if unused:
        raise ValueError(f"expected_outputs.py: no such cases {sorted(unused)}")
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
    if "tool" in types and (networked := _tools_needing_a_mock(case.fixture)):
        return f"needs a mocked tool answer for {networked}"
    needs_upstream = (types & TASK_NODE_TYPES) - EXECUTABLE_TASK_TYPES
    if needs_upstream - LLM_TASK_TYPES or (needs_upstream and llm_replies(case) is None):
        return f"needs a mocked LLM answer for {sorted(needs_upstream)}"
    if needs_upstream:
        no_call = why_no_real_llm_call(case)
        if no_call:
            return no_call
        return "run against `fanflow mock-llm` (test_conformance_llm.py)"
    if "http-request" in types and (
        case.mocks.get("mode") != "http_fixture" or case.mocks.get("http") is not None
    ):
        # the recorded-response cases answer for https://sample.invalid/..., which no real
        # client reaches; the cases without a recording expect the request to fail
        return "needs a recorded HTTP response"
    return None


def _tools_needing_a_mock(fixture: str) -> list[str]:
    """The fixture's tool providers that are not built-ins fanflow runs offline."""
    needing = []
    for data in fixture_nodes(fixture).values():
        if data.get("type") != "tool":
            continue
        provider = BUILTIN_PROVIDERS.get(provider_key(str(data.get("provider_id") or "")))
        if provider is None or provider.network:
            needing.append(str(data.get("provider_id")))
    return sorted(needing)


def outputs_match(actual: Any, expected: Any, *, exact: bool) -> bool:
    """Upstream's comparison: Python `==` (1 == 1.0); extra keys allowed unless exact.
    An expected `{}` means no outputs; there is no "anything" (None is refused)."""
    if expected is None:
        raise ValueError("no expected outputs: add the case to expected_outputs.py")
    if exact or not expected or not isinstance(expected, dict) or not isinstance(actual, dict):
        return actual == expected
    return all(key in actual and actual[key] == value for key, value in expected.items())


@cache
def fixture_nodes(fixture: str) -> dict[str, dict[str, Any]]:
    """Node id -> node `data` of a fixture (`workflow.graph` or a bare `graph`)."""
    document = yaml.safe_load((FIXTURES / fixture).read_text(encoding="utf-8")) or {}
    graph = (document.get("workflow") or document).get("graph") or {}
    return {str(node["id"]): node.get("data") or {} for node in graph.get("nodes") or []}


def needs_mock_llm(case: Case) -> bool:
    """The case runs against `fanflow mock-llm` (its only obstacle was mocked LLM answers)."""
    return why_not_runnable(case) == "run against `fanflow mock-llm` (test_conformance_llm.py)"


def llm_replies(case: Case) -> dict[str, dict[str, Any]] | None:
    """What `fanflow mock-llm` answers each LLM node of `case`, as its `mocks` say: node id
    -> `{"text": ...}` or `{"error": ..., "status": MOCK_ERROR_STATUS}`. None when the mocks
    do not give every LLM node of the fixture one plain answer."""
    llm_nodes = {
        node_id: data
        for node_id, data in fixture_nodes(case.fixture).items()
        if data.get("type") in LLM_TASK_TYPES
    }
    mocks = case.mocks
    replies: dict[str, dict[str, Any]] = {}
    if mocks.get("mode") == "auto_mock":
        for node_id, mocked in (mocks.get("effective_node_outputs") or {}).items():
            if node_id not in llm_nodes:
                continue  # a node that ran for real upstream (a template, ...)
            if mocked.get("error"):
                replies[node_id] = {"error": str(mocked["error"]), "status": MOCK_ERROR_STATUS}
            elif isinstance(mocked.get("outputs"), dict) and isinstance(
                mocked["outputs"].get("text"), str
            ):
                replies[node_id] = {"text": mocked["outputs"]["text"]}
            else:
                return None
    elif mocks.get("mode") == "fake_llm":
        # answers by model: each LLM node gets its model's single answer
        for node_id, data in llm_nodes.items():
            answers = (mocks.get("responses") or {}).get((data.get("model") or {}).get("name"))
            if not isinstance(answers, list) or len(answers) != 1:
                return None
            replies[node_id] = {"text": str(answers[0])}
    elif mocks.get("mode") == "patched":
        for node_id, chunks in _PATCHED_STREAM.findall(str(mocks.get("note") or "")):
            replies[node_id] = {"text": "".join(json.loads(chunks))}
    else:
        return None
    if set(replies) != set(llm_nodes):
        return None
    return replies


def why_no_real_llm_call(case: Case) -> str | None:
    """Why an LLM node of `case` cannot make the call upstream's mock stands in for: upstream
    replaces the whole node, so neither its model nor its prompt is ever read there."""
    for node_id, data in fixture_nodes(case.fixture).items():
        if data.get("type") not in LLM_TASK_TYPES:
            continue
        model = data.get("model") or {}
        if not model.get("name"):
            return (
                f"LLM node {node_id} has no model (name {model.get('name')!r}): upstream's mock "
                "replaces the node, a real call needs a model"
            )
        if _prompt_is_empty(data, case.query):
            return (
                f"LLM node {node_id}'s prompt is empty for sys.query {case.query!r}: upstream's "
                "mock replaces the node, a real call (Dify's too) has no prompt to send"
            )
    return None


def _prompt_is_empty(data: dict[str, Any], query: str | None) -> bool:
    """A chat prompt whose messages hold nothing but `{{#sys.query#}}`, with that empty."""
    template = data.get("prompt_template")
    memory = data.get("memory")
    if not isinstance(template, list) or (isinstance(memory, dict) and memory):
        return False
    for message in template:
        if not isinstance(message, dict) or message.get("edition_type") == "jinja2":
            return False
        if str(message.get("text") or "").replace("{{#sys.query#}}", query or ""):
            return False
    return True


def graph_patches(case: Case) -> dict[str, dict[str, Any]]:
    """Node id -> `data` keys upstream's test sets on the loaded graph before the run."""
    return GRAPH_PATCHES.get(str(case.mocks.get("note") or ""), {})


def llm_delay_ms(case: Case) -> float:
    """The delay upstream's mock puts before an LLM answer (`mocks.note`), in ms."""
    found = _DELAY.search(str(case.mocks.get("note") or ""))
    return float(found.group(1)) * 1000 if found else 0.0
