"""Real Dify exports (tests/data/dify/dsl) end to end against `fanflow mock-llm`.

Every export is in exactly one list: RUNNABLE (runs here: on the mesh, LLM calls to the
mock, each ends with the status and outputs given), NEEDS_NETWORK (an http-request node
calls a fixed public or private host — its URL does not come from an input, so no local stub
can stand in; checked with the resolver made to fail: the run fails at that node for that
reason and for no other), or NOT_LOADABLE (node types fanflow does not support).
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

import fanflow.resilience.ssrf
from fanflow.dsl.load import load_workflow
from fanflow.errors import WorkflowInvalid
from fanflow.executors.wiring import context_from_settings
from fanflow.runner import EmbeddedRunner
from fanflow.runtime import RunRequest
from fanflow.scheduler import Limits
from fanflow.settings import Settings
from tests.e2e.conftest import DIFY_DSL, E2E_DATA, Mocks
from tests.mesh.conftest import running_cluster
from tests.tools.fakes import Reply, Seen, fake_service

pytestmark = pytest.mark.timeout(90)

WENSI_INPUTS = {
    "topic": "城市骑行",
    "target_length": "1500",
    "style": "生活随笔",
    "target_audience": "上班族",
}
#: file → [(inputs, expected status, expected outputs or None to check by hand below)]
RUNNABLE: dict[str, list[tuple[dict[str, Any], str, dict[str, Any] | None]]] = {
    "conditional_parallel_code_execution_workflow.yml": [
        ({"switch": 1}, "succeeded", {"1": "Code 1", "2": "Code 2", "3": None}),
        ({"switch": 2}, "succeeded", {"1": None, "2": "Code 2", "3": "Code 3"}),
    ],
    "increment_loop_with_break_condition_workflow.yml": [({}, "succeeded", {"num": 5})],
    "parallel_iteration_formatting_workflow.yml": [
        ({}, "succeeded", {"output": ["output: 1", "output: 2", "output: 3"]})
    ],
    # sample.invalid never resolves (RFC 6761): the default value answers, as in Dify
    "http_default_output.yml": [
        ({"path": "x"}, "partial-succeeded", {"status": 599, "text": "denied default"})
    ],
    # 3 LLM nodes (outline → iteration over its sections → editor); the mock's reply rule
    # gives the outline JSON its code node parses
    "文思泉涌.yml": [(WENSI_INPUTS, "succeeded", None)],
}

FILE_INPUT = {
    "type": "image",
    "transfer_method": "remote_url",
    "url": "https://example.com/invoice.png",
    "remote_url": "https://example.com/invoice.png",
}
#: file → (inputs, the node that needs the network, its error's text, why)
NEEDS_NETWORK: dict[str, tuple[dict[str, Any], str, str, str]] = {
    "76-dify案例分享-100% 识别率！发票、汇票、信用证全搞定的通用票据识别工作流.yml": (
        {"file": FILE_INPUT, "typebill": "发票"},
        "1754984205380",
        "cannot resolve host pizhapi.duckcloud.fun",
        "POSTs the file to an OCR API at https://pizhapi.duckcloud.fun before any LLM node",
    ),
    "Dify 运营一条龙.yml": (
        {"basic_instruction": "介绍 fanflow"},
        "1721651094996",
        "cannot resolve host api.imgrender.net",
        "4 image renders at https://api.imgrender.net feed its code nodes",
    ),
    "Dify_AI应用：News_Hot_List_36氪.yml": (
        {},
        "1731657173907",
        "cannot resolve host api.vvhan.com",
        "first node GETs https://api.vvhan.com; later r.jina.ai and a LAN host 192.168.0.141",
    ),
    "抓取获取36氪热榜文章内容 .yml": (
        {},
        "1731575885694",
        "cannot resolve host api.vvhan.com",
        "first node GETs https://api.vvhan.com, then r.jina.ai per article",
    ),
    "Text to Card Iteration.yml": (
        {"author": "me", "body_text": "hello world"},
        "1721710297246",
        "cannot resolve host api.imgrender.cn",
        "renders the card at https://api.imgrender.cn",
    ),
    "即梦AI绘画.yml": (
        {"prompt": "a cat"},
        "1738651665284",
        "cannot resolve host jimeng.duckcloud.fun",
        "image generation at https://jimeng.duckcloud.fun",
    ),
    # fails before its network call: a code node imports pandas (fanflow's sandbox, like a
    # bare Python, has the standard library only; Dify's sandbox ships pandas)
    "runLLMCode.yml": (
        {"File": FILE_INPUT, "query": "sum the first column"},
        "1733364687479",
        "No module named 'pandas'",
        "code nodes need pandas, and it runs code on Dify's sandbox at http://sandbox:8194",
    ),
}

#: file → (inputs, what its tool nodes call): runs on the mesh with its tools' services
#: faked locally (the tools file points the providers at them), LLM calls to the mock
RUNS_WITH_FAKE_TOOLS: dict[str, tuple[dict[str, Any], str]] = {
    "LanguageConsistencyChecker.yml": (
        {"url": "guides/intro.md", "lang": "en-US"},
        "3 jina_reader calls; code nodes parse the reader's JSON",
    ),
    "链文智译-LinkTrans Smart.yml": (
        {"url": "https://example.com/post"},
        "1 firecrawl scrape feeding an LLM's context",
    ),
}
#: file → (the node that fails, its error): valid, and fails at run for a named feature
FAILS_AT_RUN = {
    "获取金融投资新闻top10.yml": ("1739247876689", "code_language 'javascript' is not supported"),
}
#: file → what refuses it: node types, or tool providers (`tool:<provider>`) fanflow lacks
NOT_LOADABLE = {
    "Claude3 Code Translation.yml": "tool:aws",
    "儿童故事播客.yml": "tool:audio, tool:comfyui",
    "出题组卷.yml": "tool:feishu_document",
    "文章仿写-单图_多图自动搭配.yml": "tool:本地爬虫, tool:imageSearch",
    "资讯推送应用.yml": "tool:wecom",
}


def test_every_export_is_classified() -> None:
    files = {path.name for path in DIFY_DSL.glob("*.yml")}
    lists = (
        set(RUNNABLE),
        set(NEEDS_NETWORK),
        set(RUNS_WITH_FAKE_TOOLS),
        set(FAILS_AT_RUN),
        set(NOT_LOADABLE),
    )
    assert set().union(*lists) == files
    assert sum(len(names) for names in lists) == len(files)
    for name in sorted(files):
        try:
            load_workflow(DIFY_DSL / name)
        except WorkflowInvalid as exc:
            assert name in NOT_LOADABLE, f"{name}: {exc}"
            kinds = {k.strip() for k in NOT_LOADABLE[name].split(",")}
            for kind in kinds:
                provider = kind.removeprefix("tool:")
                expected = (
                    f"tool provider '{provider}'"
                    if kind.startswith("tool:")
                    else f"unsupported node type '{kind}'"
                )
                assert any(expected in str(p) for p in exc.problems), (name, kind)
            continue
        assert name not in NOT_LOADABLE, f"{name} loads now: run it"


async def test_runnable_exports_on_the_mesh(tmp_path: Path, mocks: Mocks) -> None:
    mock = mocks.start("--replies", str(E2E_DATA / "dify_exports_replies.yml"))
    env = {"FANFLOW_LLM_BASE_URL": mock.url}
    async with running_cluster("sqlite", tmp_path, workers=1, worker_env=env) as cluster:
        started = []
        for name, cases in RUNNABLE.items():
            app = await cluster.register(DIFY_DSL / name)
            for inputs, status, outputs in cases:
                run_id = await cluster.start_run(app, inputs)
                started.append((name, inputs, status, outputs, run_id))
        runs = await asyncio.gather(*(cluster.wait(s[-1], timeout_s=60) for s in started))
    table = []
    for (name, inputs, _status, _outputs, _), run in zip(started, runs, strict=True):
        shown = json.dumps(run.outputs, ensure_ascii=False)
        table.append(
            f"{run.status:<18} {name} {json.dumps(inputs, ensure_ascii=False)[:40]}"
            f" → {shown[:90]}{' …' if len(shown) > 90 else ''}"
        )
    print("\nDify exports on the mesh (LLM: mock-llm):\n" + "\n".join(table))
    print(f"mock-llm saw {mock.stats()['requests']} requests")
    for (name, _inputs, status, outputs, _), run in zip(started, runs, strict=True):
        assert (run.status, run.error) == (status, None), name
        if outputs is not None:
            assert run.outputs == outputs, name
    wensi = runs[[s[0] for s in started].index("文思泉涌.yml")]
    assert len(wensi.outputs["sections"]) == 3
    assert all(isinstance(t, str) and t.startswith("mock-") for t in wensi.outputs["sections"])
    assert wensi.outputs["final_article"].startswith("mock-")
    assert mock.stats()["requests"] == 5  # outline, 3 sections, editor


def _jina(seen: Seen) -> Reply:
    page = seen.path.rsplit("/", 1)[-1]
    language = seen.path.split("/main/")[1].split("/")[0]
    content = f"{language} text of {page}"
    return Reply(body={"code": 200, "data": {"url": seen.path[1:], "content": content}})


async def test_exports_with_tools_on_the_mesh(tmp_path: Path, mocks: Mocks) -> None:
    """Tool nodes run on the workers' tool class against local fakes of jina and firecrawl;
    their outputs reach the code and LLM nodes after them."""
    mock = mocks.start()
    with fake_service() as service:
        service.prefix("GET", "/", _jina)
        service.route(
            "POST",
            "/v1/scrape",
            lambda seen: Reply(
                body={"success": True, "data": {"markdown": f"# Post at {seen.json()['url']}"}}
            ),
        )
        tools_file = tmp_path / "tools.yml"
        tools_file.write_text(
            yaml.safe_dump(
                {
                    "providers": {
                        "jina": {"base_url": service.url},
                        "firecrawl": {"base_url": service.url, "api_key": "fc-test"},
                    }
                }
            )
        )
        env = {"FANFLOW_LLM_BASE_URL": mock.url, "FANFLOW_TOOLS_FILE": str(tools_file)}
        async with running_cluster("sqlite", tmp_path, workers=1, worker_env=env) as cluster:
            started = []
            for name, (inputs, _why) in RUNS_WITH_FAKE_TOOLS.items():
                app = await cluster.register(DIFY_DSL / name)
                started.append((name, await cluster.start_run(app, inputs)))
            for name in FAILS_AT_RUN:
                app = await cluster.register(DIFY_DSL / name)
                started.append((name, await cluster.start_run(app, {})))
            runs = {name: await cluster.wait(run_id, timeout_s=60) for name, run_id in started}
    checker = runs["LanguageConsistencyChecker.yml"]
    assert (checker.status, checker.error) == ("succeeded", None)
    assert set(checker.outputs) == {"cn", "en", "jp"}
    assert all(isinstance(v, str) and v.startswith("mock-") for v in checker.outputs.values())
    readers = sorted(s.path for s in service.seen if s.method == "GET")
    assert readers == [
        f"/https://raw.githubusercontent.com/langgenius/dify-docs/refs/heads/main/{lang}"
        "/guides/intro.md"
        for lang in ("en", "jp", "zh_CN")
    ]
    linktrans = runs["链文智译-LinkTrans Smart.yml"]
    assert (linktrans.status, linktrans.error) == ("succeeded", None)
    assert linktrans.outputs["text"].startswith("mock-")
    [scrape] = [s for s in service.seen if s.method == "POST"]
    assert scrape.headers["authorization"] == "Bearer fc-test"
    assert scrape.json()["url"] == "https://example.com/post"
    # the scraped markdown is the context of the first LLM call
    bodies = [json.dumps(r["body"], ensure_ascii=False) for r in mock.requests()]
    assert any("# Post at https://example.com/post" in body for body in bodies)
    news = runs["获取金融投资新闻top10.yml"]
    node_id, error = FAILS_AT_RUN["获取金融投资新闻top10.yml"]
    assert news.status == "failed"
    assert news.error is not None and news.error.startswith(f"{node_id} (") and error in news.error


@pytest.mark.parametrize("name", sorted(NEEDS_NETWORK))
async def test_needs_network(name: str, mocks: Mocks, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the network (the resolver fails), the run fails at the node that needs it."""

    async def no_network(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(fanflow.resilience.ssrf, "resolve_host", no_network)
    mock = mocks.start()
    inputs, node_id, error, _why = NEEDS_NETWORK[name]
    runner = EmbeddedRunner(
        limits=Limits(max_run_seconds=30),
        context=context_from_settings(Settings(llm_base_url=mock.url)),
    )
    result = await runner.async_run(
        load_workflow(DIFY_DSL / name), RunRequest(inputs=inputs, query="hi")
    )
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith(f"{node_id} ("), result.error
    assert error in result.error
