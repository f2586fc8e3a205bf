"""Network tools against local fakes of their services' documented HTTP APIs, with the
resilience every external call gets: retries, 429 and Retry-After, breakers, metrics, the
SSRF guard."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from prometheus_client import REGISTRY

from fanflow.executors import ExecutionContext
from fanflow.resilience import ssrf
from fanflow.resilience.breaker import BreakerConfig
from fanflow.resilience.upstreams import Upstreams
from tests.tools.conftest import catalog, run_tool, tool_task
from tests.tools.fakes import FakeService, Reply, Seen


def context(config: dict[str, Any], **fields: Any) -> ExecutionContext:
    return ExecutionContext(upstreams=Upstreams(), tools=catalog(config), **fields)


def calls(upstream: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "fanflow_upstream_calls_total", {"upstream": upstream, "kind": "tool", "outcome": outcome}
    )
    return value or 0.0


# ---- jina reader ----


def _jina(seen: Seen) -> Reply:
    return Reply(
        body={
            "code": 200,
            "status": 20000,
            "data": {"title": "Doc", "url": seen.path[1:], "content": "# Hello\nworld"},
        }
    )


async def test_jina_reader_sends_the_url_options_and_the_configured_key(
    service: FakeService,
) -> None:
    service.prefix("GET", "/", _jina)
    ctx = context({"providers": {"jina": {"base_url": service.url, "api_key": "jina-key"}}})
    before = calls("tool:jina", "success")
    result = await run_tool(
        tool_task(
            "jina",
            "jina_reader",
            {
                "url": {"type": "mixed", "value": "https://example.com/{{#start.page#}}"},
                # a key in the DSL is not a credential: it is never sent
                "api_key": "from-the-dsl",
            },
            configurations={"target_selector": "main", "no_cache": 1, "summary": 0},
            variables={"start.page": "docs/intro.md"},
        ),
        ctx,
    )
    assert result.status == "succeeded", result.error
    [seen] = service.seen
    assert seen.path == "/https://example.com/docs/intro.md"
    assert seen.headers["authorization"] == "Bearer jina-key"
    assert seen.headers["accept"] == "application/json"
    assert seen.headers["x-target-selector"] == "main"
    assert seen.headers["x-no-cache"] == "true"
    assert "x-with-generated-alt" not in seen.headers
    # Dify's reader tool answers with the reader's JSON text
    assert '"content": "# Hello\\nworld"' in result.outputs["text"]
    assert result.outputs["json"] == [{"data": []}]
    assert calls("tool:jina", "success") == before + 1


async def test_jina_without_a_key_sends_no_authorization(service: FakeService) -> None:
    service.prefix("GET", "/", _jina)
    result = await run_tool(
        tool_task("jina", "jina_reader", {"url": "https://example.com"}),
        context({"providers": {"jina": {"base_url": service.url}}}),
    )
    assert result.status == "succeeded", result.error
    assert "authorization" not in service.seen[0].headers


# ---- firecrawl ----


async def test_firecrawl_scrape_payload_and_outputs(service: FakeService) -> None:
    answer = {"success": True, "data": {"markdown": "# Page", "metadata": {"title": "P"}}}
    service.route("POST", "/v1/scrape", Reply(body=answer))
    result = await run_tool(
        tool_task(
            "firecrawl",
            "scrape",
            {"url": "https://example.com/news"},
            configurations={
                "formats": "markdown",
                "onlyMainContent": 0,
                "includeTags": ".entry, .post",
                "excludeTags": None,
                "headers": None,
                "waitFor": 0,
                "timeout": 30000,
                "systemPrompt": None,
            },
        ),
        context({"providers": {"firecrawl": {"base_url": service.url, "api_key": "fc-key"}}}),
    )
    assert result.status == "succeeded", result.error
    [seen] = service.seen
    assert seen.headers["authorization"] == "Bearer fc-key"
    assert seen.json() == {
        "url": "https://example.com/news",
        "formats": ["markdown"],
        "onlyMainContent": False,
        "includeTags": [".entry", ".post"],
        "waitFor": 0,
        "timeout": 30000,
    }
    assert result.outputs["text"] == "# Page"
    assert result.outputs["json"] == [answer]


async def test_firecrawl_without_credentials_fails_saying_what_to_configure() -> None:
    result = await run_tool(
        tool_task("firecrawl", "scrape", {"url": "https://example.com"}), context({})
    )
    assert result.status == "failed"
    assert result.error_type == "ToolProviderCredentialError"
    assert "providers.firecrawl.api_key_env" in (result.error or "")


async def test_a_service_error_in_the_answer_fails_the_node(service: FakeService) -> None:
    service.route("POST", "/v1/scrape", Reply(body={"success": False, "error": "blocked"}))
    result = await run_tool(
        tool_task("firecrawl", "scrape", {"url": "https://example.com"}),
        context({"providers": {"firecrawl": {"base_url": service.url, "api_key": "k"}}}),
    )
    assert result.status == "failed"
    assert "firecrawl could not scrape https://example.com: blocked" in (result.error or "")


# ---- tavily ----


def _tavily(seen: Seen) -> Reply:
    query = seen.json()["query"]
    return Reply(
        body={
            "query": query,
            "answer": None,
            "results": [
                {"title": "One", "url": "https://one.example", "content": "first", "score": 0.9},
                {"title": "Two", "url": "https://two.example", "content": "second", "score": 0.5},
            ],
        }
    )


async def test_tavily_search(service: FakeService) -> None:
    service.route("POST", "/search", _tavily)
    result = await run_tool(
        tool_task("tavily", "tavily_search", {"query": "fanflow", "max_results": "2"}),
        context({"providers": {"tavily": {"base_url": service.url, "api_key": "tvly-key"}}}),
    )
    assert result.status == "succeeded", result.error
    [seen] = service.seen
    assert seen.headers["authorization"] == "Bearer tvly-key"
    assert seen.json()["max_results"] == 2 and seen.json()["search_depth"] == "basic"
    assert "# One\n* URL: https://one.example\n* Content: first" in result.outputs["text"]
    assert result.outputs["json"][0]["results"][1]["title"] == "Two"


async def test_a_malformed_answer_fails_with_reason_format(service: FakeService) -> None:
    service.route("POST", "/search", Reply(body="<html>oops</html>", content_type="text/html"))
    result = await run_tool(
        tool_task("tavily", "tavily_search", {"query": "q"}),
        context({"providers": {"tavily": {"base_url": service.url, "api_key": "k"}}}),
    )
    assert result.status == "failed"
    assert result.reason == "format"
    assert "the answer is not JSON" in (result.error or "")
    service.route("POST", "/search", Reply(body={"no": "results"}))
    result = await run_tool(
        tool_task("tavily", "tavily_search", {"query": "q"}),
        context({"providers": {"tavily": {"base_url": service.url, "api_key": "k"}}}),
    )
    assert (result.status, result.reason) == ("failed", "format")
    assert "malformed answer: no `results` list" in (result.error or "")


async def test_429_is_retried_after_retry_after(service: FakeService) -> None:
    replies = [Reply(429, {"e": "slow"}, headers={"Retry-After": "0"})] * 2

    def limited(seen: Seen) -> Reply:
        return replies.pop() if replies else _tavily(seen)

    service.route("POST", "/search", limited)
    result = await run_tool(
        tool_task("tavily", "tavily_search", {"query": "q"}),
        context({"providers": {"tavily": {"base_url": service.url, "api_key": "k"}}}),
    )
    assert result.status == "succeeded", result.error
    assert len(service.seen) == 3


async def test_a_long_retry_after_goes_back_to_the_scheduler(service: FakeService) -> None:
    service.route("POST", "/search", Reply(429, {"e": "slow"}, headers={"Retry-After": "30"}))
    result = await run_tool(
        tool_task("tavily", "tavily_search", {"query": "q"}),
        context({"providers": {"tavily": {"base_url": service.url, "api_key": "k"}}}),
    )
    assert (result.status, result.reason, result.retryable) == ("failed", "status_429", True)
    assert result.retry_after_ms == 30_000
    assert len(service.seen) == 1


async def test_a_4xx_is_not_retried(service: FakeService) -> None:
    service.route("POST", "/search", Reply(401, {"detail": "bad key"}))
    result = await run_tool(
        tool_task("tavily", "tavily_search", {"query": "q"}),
        context({"providers": {"tavily": {"base_url": service.url, "api_key": "k"}}}),
    )
    assert (result.status, result.reason, result.retryable) == ("failed", "status_4xx", False)
    assert "answered 401" in (result.error or "") and len(service.seen) == 1


async def test_provider_down_fails_after_retries_and_opens_the_breaker() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: connections are refused
    upstreams = Upstreams(breaker=BreakerConfig(window_size=3, min_calls=3, open_wait_s=60))
    ctx = ExecutionContext(
        upstreams=upstreams,
        tools=catalog({"providers": {"searxng": {"base_url": f"http://127.0.0.1:{port}"}}}),
    )
    task = tool_task("searxng", "searxng_search", {"query": "q"})
    first = await run_tool(task, ctx)  # 3 attempts, each refused: the window is full
    assert (first.status, first.reason, first.retryable) == ("failed", "connect", True)
    assert "cannot connect" in (first.error or "")
    assert first.error is not None and first.error.startswith("tool (My Tool): searxng: GET")
    assert upstreams.breaker_state("tool:searxng") == "open"
    refused = await run_tool(task, ctx)
    assert (refused.reason, refused.error_type) == ("breaker_open", "CircuitOpenError")


# ---- searxng and wikipedia ----


async def test_searxng_gives_one_json_message_per_result(service: FakeService) -> None:
    results = [
        {"url": "https://a.example", "title": "A"},
        {"url": "https://b.example", "title": "B"},
    ]
    service.route("GET", "/search", Reply(body={"query": "q", "results": results}))
    result = await run_tool(
        tool_task("searxng", "searxng_search", {"query": "fan flow", "search_type": "news"}),
        context({"providers": {"searxng": {"base_url": service.url}}}),
    )
    assert result.status == "succeeded", result.error
    assert service.seen[0].query == {"q": "fan flow", "format": "json", "categories": "news"}
    assert result.outputs["json"] == results
    assert result.outputs["text"] == ""


def _wiki(seen: Seen) -> Reply:
    if seen.query.get("list") == "search":
        assert seen.query["srsearch"] == "python"
        return Reply(body={"query": {"search": [{"title": "Python"}, {"title": "Monty"}]}})
    title = seen.query["titles"]
    return Reply(body={"query": {"pages": {"1": {"title": title, "extract": f"About {title}."}}}})


async def test_wikipedia_search(service: FakeService) -> None:
    service.route("GET", "/w/api.php", _wiki)
    result = await run_tool(
        tool_task("wikipedia", "wikipedia_search", {"query": "python"}),
        context({"providers": {"wikipedia": {"base_url": service.url}}}),
    )
    assert result.status == "succeeded", result.error
    assert result.outputs["text"] == (
        "Page: Python\nSummary: About Python.\n\nPage: Monty\nSummary: About Monty."
    )
    assert len(service.seen) == 3


# ---- webscraper and the SSRF guard ----


PAGE = (
    "<html><head><title>Hi</title><script>x()</script></head><body><p>Hello</p> page</body></html>"
)


async def test_webscraper_reads_title_and_text(service: FakeService) -> None:
    service.route("GET", "/page", Reply(body=PAGE, content_type="text/html"))
    result = await run_tool(
        tool_task("webscraper", "webscraper", {"url": f"{service.url}/page"}),
        context({}, http_allow_list=("127.0.0.1",)),
    )
    assert result.status == "succeeded", result.error
    assert result.outputs["text"] == f"URL: {service.url}/page\nTITLE: Hi\nTEXT: Hi\nHello\npage"


async def test_webscraper_refuses_private_addresses(service: FakeService) -> None:
    service.route("GET", "/page", Reply(body=PAGE, content_type="text/html"))
    result = await run_tool(
        tool_task("webscraper", "webscraper", {"url": f"{service.url}/page"}), context({})
    )
    assert (result.status, result.reason, result.error_type) == ("failed", "ssrf", "SSRFError")
    assert service.seen == []


async def test_a_public_name_resolving_to_loopback_is_refused(
    service: FakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def rebinding(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    monkeypatch.setattr(ssrf, "resolve_host", rebinding)
    port = service.server_address[1]
    result = await run_tool(
        tool_task("webscraper", "webscraper", {"url": f"http://news.example.com:{port}/page"}),
        context({}),
    )
    assert (result.status, result.reason) == ("failed", "ssrf")
    assert "resolves to 127.0.0.1" in (result.error or "")
    assert service.seen == []


async def test_a_trusted_provider_host_does_not_open_other_private_hosts(
    service: FakeService,
) -> None:
    """jina's configured base is trusted; a redirect from it to another private address is
    still refused, and the workflow's own URLs get no pass from it."""
    service.prefix(
        "GET", "/", lambda _s: Reply(302, b"", headers={"Location": "http://10.0.0.1/x"})
    )
    result = await run_tool(
        tool_task("jina", "jina_reader", {"url": "https://example.com"}),
        context({"providers": {"jina": {"base_url": service.url}}}),
    )
    assert (result.status, result.reason) == ("failed", "ssrf")
    scraped = await run_tool(
        tool_task("webscraper", "webscraper", {"url": f"{service.url}/page"}),
        context({"providers": {"jina": {"base_url": service.url}}}),
    )
    assert (scraped.status, scraped.reason) == ("failed", "ssrf")
