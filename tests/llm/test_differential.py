"""LLM nodes against Dify's own engine: both call the same mock-llm (echo mode) and must
send the same llm requests and report the same outputs."""

from __future__ import annotations

import json

from fanflow.dsl.load import load_workflow
from fanflow.runner import EmbeddedRunner
from fanflow.runtime import RunRequest
from tests.conftest import OracleRun
from tests.llm.conftest import LLM_DATA, MockFactory

INPUTS = {"q": "what about Lisbon City", "topic": "old towns"}
EXTRACTED = {"city": "Lisbon", "count": "12", "flags": [True, 1, False]}
#: the plain llm nodes, in run order; the classifier and extractor prompts are worded apart
LLM_NODES = ("basic", "jinja", "structured")


def test_llm_workflow_same_as_dify(mock_llm: MockFactory, oracle: OracleRun) -> None:
    mock = mock_llm(
        "--mode",
        "echo",
        replies=[
            {
                "model": "extract-model",
                "tool_call": {"name": "extract_parameters", "arguments": EXTRACTED},
            }
        ],
    )
    path = LLM_DATA / "llm_features.yml"
    dify = oracle(path, INPUTS, "--llm-base-url", mock.url, "--zero-timings")
    dify_requests = [entry["body"] for entry in mock.requests()]

    runner = EmbeddedRunner(context=mock.context())
    ours = runner.run(load_workflow(path), RunRequest(inputs=INPUTS))
    our_requests = [entry["body"] for entry in mock.requests()][len(dify_requests) :]

    assert dify["status"] == ours.status == "succeeded", (dify, ours.error)
    dify_outputs = dify["outputs"]
    our_outputs = json.loads(json.dumps(ours.outputs))
    # both report the type problem of `count`, each in its own words
    assert dify_outputs.pop("reason") and our_outputs.pop("reason")
    assert our_outputs == dify_outputs
    assert our_outputs["class_id"] == "c-city" and our_outputs["city"] == "Lisbon"

    assert len(our_requests) == len(dify_requests) == 5
    for node, theirs, mine in zip(LLM_NODES, dify_requests, our_requests[:3], strict=False):
        theirs = {k: v for k, v in theirs.items() if k != "stream"}
        assert mine == theirs, f"{node}: fanflow sent {mine}, Dify sent {theirs}"
    # the extractor reads its `query` (a selector under a key without "selector" in it:
    # the scheduler must carry it, as `fanflow.dsl.validate.node_selectors` lists it)
    assert INPUTS["q"] in our_requests[4]["messages"][-1]["content"]
    assert INPUTS["q"] in dify_requests[4]["messages"][-1]["content"]
    # the extractor offers the same tool schema
    assert (
        our_requests[4]["tools"][0]["function"]["parameters"]
        == (dify_requests[4]["tools"][0]["function"]["parameters"])
    )
    assert ours.total_tokens > 0
