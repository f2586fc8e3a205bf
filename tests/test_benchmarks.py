"""The benchmarks' fast upstream answers correctly (no timings: benchmarks/ prints those)."""

from __future__ import annotations

import httpx

from benchmarks.common import fanout_inputs, fanout_yaml
from benchmarks.upstream import Upstream, ceiling
from fanflow.dsl import load_workflow


def test_upstream_serves_chat_completions_and_get_over_keep_alive() -> None:
    with Upstream(delay_ms=20) as upstream, httpx.Client() as client:
        body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(3):  # one connection, several requests
            reply = client.post(f"{upstream.url}/chat/completions", json=body)
            assert reply.status_code == 200
            assert reply.json()["choices"][0]["message"] == {"role": "assistant", "content": "ok"}
            assert reply.json()["usage"]["total_tokens"] == 2
        assert client.get(f"http://127.0.0.1:{upstream.port}/anything").text == "ok"
        assert client.get(f"http://127.0.0.1:{upstream.port}/health").text == "ok"
        # the ceiling client completes requests (how many is the benchmarks' business)
        assert ceiling(upstream.port, concurrency=4, seconds=0.3) > 0
    assert upstream.process is not None and upstream.process.poll() is not None


def test_benchmark_workflow_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "fanout.yml"
    path.write_text(fanout_yaml(parallel_nums=100))
    workflow = load_workflow(path)
    assert workflow.name == "bench-fanout"
    assert fanout_inputs(3) == {"payload": {"items": [0, 1, 2]}}
