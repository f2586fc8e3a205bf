"""`fanflow mock-llm`: OpenAI-compatible answers, seeded faults, stats and request log."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from fanflow.llm.mock_replies import build_reply, load_replies, sample
from fanflow.llm.mock_server import MockOptions
from tests.llm.conftest import MockFactory

BODY = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}


def post(url: str, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{url}/chat/completions", json=body, timeout=10, **kwargs)  # type: ignore[arg-type]


def test_routes_and_openai_shape(mock_llm: MockFactory) -> None:
    mock = mock_llm()
    base = mock.url.removesuffix("/v1")
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}
    assert httpx.get(f"{mock.url}/models").json()["data"][0]["id"] == "mock"
    reply = post(mock.url, BODY).json()
    assert reply["object"] == "chat.completion" and reply["model"] == "m"
    [choice] = reply["choices"]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"].startswith("mock-")
    assert reply["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    # the same request, the same answer; without /v1 too
    assert post(base, BODY).json()["choices"] == reply["choices"]
    assert post(mock.url, {"messages": "x"}).status_code == 400
    assert post(mock.url, {**BODY, "stream": True}).status_code == 400
    stats = mock.stats()
    assert (stats["requests"], stats["succeeded"], stats["rejected"]) == (4, 2, 2)
    assert stats["by_model"] == {"m": 2} and stats["prompt_tokens"] == 6
    log = mock.requests()
    assert [entry["status"] for entry in log] == [200, 200, 400, 400]
    assert log[0]["body"] == BODY
    assert httpx.post(f"{base}/reset").status_code == 200
    assert mock.stats()["requests"] == 0 and mock.requests() == []


def test_seeded_faults_repeat_and_are_counted(mock_llm: MockFactory) -> None:
    args = ("--error-rate", "0.2", "--rate-limit-rate", "0.2", "--malformed-rate", "0.2")
    sequences = []
    for _ in range(2):
        mock = mock_llm(*args, "--seed", "5", "--retry-after-s", "2")
        statuses = []
        for _ in range(30):
            response = post(mock.url, BODY)
            if response.status_code == 429:
                assert response.headers["retry-after"] == "2"
            elif response.status_code == 503:
                assert response.json()["error"]["type"] == "server_error"
            elif response.status_code == 200:
                try:
                    response.json()
                except ValueError:
                    statuses.append("malformed")
                    continue
            statuses.append(str(response.status_code))
        sequences.append(statuses)
        faults = mock.stats()["faults"]
        assert faults["status_5xx"] == statuses.count("503") > 0
        assert faults["status_429"] == statuses.count("429") > 0
        assert faults["malformed"] == statuses.count("malformed") > 0
        assert mock.stats()["succeeded"] == statuses.count("200")
    assert sequences[0] == sequences[1]
    other_seed = mock_llm(*args, "--seed", "6")
    assert [str(post(other_seed.url, BODY).status_code) for _ in range(30)] != [
        s if s != "malformed" else "200" for s in sequences[0]
    ]


def test_latency_and_timeout_fault(mock_llm: MockFactory) -> None:
    mock = mock_llm("--latency-ms", "300", "--jitter-ms", "50")
    started = time.monotonic()
    post(mock.url, BODY)
    assert 0.3 <= time.monotonic() - started < 2
    slow = mock_llm("--timeout-rate", "1", "--timeout-sleep-s", "10")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{slow.url}/chat/completions", json=BODY, timeout=0.5)
    assert slow.stats()["faults"]["timeout"] == 1


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="add up to at most 1"):
        MockOptions(error_rate=0.7, timeout_rate=0.5)
    with pytest.raises(ValueError, match="mode must be one of"):
        MockOptions(mode="smart")
    path = tmp_path / "replies.yaml"
    path.write_text("- 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected a list of rules"):
        load_replies(path)


def test_reply_rules(tmp_path: Path) -> None:
    path = tmp_path / "replies.json"
    path.write_text(json.dumps({"node-7": "by node", "m": {"error": "nope", "status": 418}}))
    options = MockOptions(replies=load_replies(path))
    assert build_reply(BODY, "node-7", options) == {"text": "by node"}
    assert build_reply(BODY, None, options) == {"error": "nope", "status": 418}
    rules = ({"contains": "two", "json": {"a": 1}},)
    assert build_reply(BODY, None, MockOptions(replies=rules)) == {"text": '{"a": 1}'}
    assert build_reply(BODY, None, MockOptions(mode="echo")) == {"text": "one two three"}
    assert build_reply(BODY, None, MockOptions(mode="fixed", reply="hi")) == {"text": "hi"}


def test_tools_json_and_classifier_answers() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}},
        },
    }
    called = build_reply({**BODY, "tools": [tool]}, None, MockOptions())
    assert called["tool_call"]["name"] == "f" and isinstance(
        called["tool_call"]["arguments"]["x"], int
    )
    assert "tool_call" not in build_reply(
        {**BODY, "tools": [tool], "tool_choice": "none"}, None, MockOptions()
    )
    json_object = build_reply(
        {**BODY, "response_format": {"type": "json_object"}}, None, MockOptions()
    )
    assert isinstance(json.loads(json_object["text"]), dict)
    document = {
        "input_text": ["my invoice is wrong"],
        "categories": [
            {"category_id": "a", "category_name": "Shipping"},
            {"category_id": "b", "category_name": "Invoice"},
        ],
    }
    body = {"messages": [{"role": "user", "content": "\n  " + json.dumps(document)}]}
    assert json.loads(build_reply(body, None, MockOptions())["text"]) == {
        "category_id": "b",
        "category_name": "Invoice",
    }


def test_sample_follows_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "i": {"type": "integer"},
            "n": {"type": "number"},
            "b": {"type": "boolean"},
            "e": {"enum": ["x", "y"]},
            "a": {"type": "array", "items": {"type": "integer"}},
            "o": {"type": ["null", "object"], "properties": {"k": {"const": 1}}},
            "u": {"anyOf": [{"type": "boolean"}, {"type": "string"}]},
        },
    }
    value = sample(schema, "seed")
    assert value == sample(schema, "seed") != sample(schema, "other")
    assert isinstance(value["s"], str) and isinstance(value["i"], int)
    assert isinstance(value["n"], float) and isinstance(value["b"], bool)
    assert value["e"] in ("x", "y") and all(isinstance(x, int) for x in value["a"])
    assert value["o"] == {"k": 1} and isinstance(value["u"], bool)
