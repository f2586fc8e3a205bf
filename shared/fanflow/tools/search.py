"""Web search: Dify's `tavily`, `searxng` and `wikipedia` providers over their HTTP APIs.

- tavily_search: ``POST {base}/search`` (bearer key) ``{query, search_depth, topic,
  max_results, include_answer, include_images, include_raw_content, include_domains,
  exclude_domains}``; text lists the results, json is the answer.
- searxng_search: ``GET {base}/search?q=…&format=json&categories=…&language=…``; one JSON
  message per result, as Dify's tool yields them.
- wikipedia_search: the MediaWiki API (``list=search``, then each page's intro extract);
  text ``Page: …\\nSummary: …`` per page, as Dify's tool answers.
"""

from __future__ import annotations

from typing import Any

from fanflow.resilience.upstreams import UpstreamFailure
from fanflow.tools.base import (
    Tool,
    ToolCall,
    ToolParameter,
    ToolResult,
    not_configured,
    param,
)

__all__ = ["SEARXNG_TOOLS", "TAVILY_TOOLS", "WIKIPEDIA_TOOLS"]

TAVILY = "https://api.tavily.com"
WIKIPEDIA_TOP_K = 3


def _malformed(call: ToolCall, what: str) -> UpstreamFailure:
    return UpstreamFailure(
        f"{call.label}: {call.provider}: malformed answer: {what}",
        reason="format",
        retryable=False,
        error_type="ToolInvokeError",
    )


def _domains(value: Any) -> list[str] | None:
    if not value:
        return None
    return [d.strip() for d in str(value).replace(";", ",").split(",") if d.strip()]


async def _tavily_search(params: dict[str, Any], call: ToolCall) -> ToolResult:
    if not call.config.api_key:
        raise not_configured(
            call, "provider tavily has no api key: give providers.tavily.api_key_env"
        )
    payload = {
        "query": params["query"],
        "search_depth": params.get("search_depth") or "basic",
        "topic": params.get("topic") or "general",
        "max_results": int(params.get("max_results") or 5),
        "include_answer": bool(params.get("include_answer")),
        "include_images": bool(params.get("include_images")),
        "include_raw_content": bool(params.get("include_raw_content")),
        "include_domains": _domains(params.get("include_domains")),
        "exclude_domains": _domains(params.get("exclude_domains")),
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    reply = await call.http.request(
        "POST",
        f"{call.config.base_url or TAVILY}/search",
        headers={"Authorization": f"Bearer {call.config.api_key}"},
        json_body=payload,
    )
    answer = reply.json()
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list):
        raise _malformed(call, "no `results` list")
    parts = []
    if answer.get("answer"):
        parts.append(f"# Answer\n{answer['answer']}\n")
    for item in results:
        if isinstance(item, dict):
            parts.append(
                f"# {item.get('title', '')}\n* URL: {item.get('url', '')}\n"
                f"* Content: {item.get('content', '')}\n"
            )
    return ToolResult().add_text("\n".join(parts) or "No results found.").add_json(answer)


async def _searxng_search(params: dict[str, Any], call: ToolCall) -> ToolResult:
    if not call.config.base_url:
        raise not_configured(
            call, "provider searxng has no base_url: give providers.searxng.base_url"
        )
    query = {
        "q": params["query"],
        "format": "json",
        "categories": params.get("search_type") or "general",
        "language": params.get("language") or None,
        "time_range": params.get("time_range") or None,
    }
    reply = await call.http.request("GET", f"{call.config.base_url}/search", params=query)
    answer = reply.json()
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list):
        raise _malformed(call, "no `results` list")
    result = ToolResult()
    if not results:
        return result.add_text(f"No results found, get response: {reply.text[:500]}")
    for item in results:
        result.add_json(item)
    return result


async def _wikipedia_search(params: dict[str, Any], call: ToolCall) -> ToolResult:
    language = str(params.get("language") or "en")
    api = f"{call.config.base_url or f'https://{language}.wikipedia.org'}/w/api.php"
    hits = await _wiki_query(
        call, api, "search", list="search", srsearch=params["query"], srlimit=WIKIPEDIA_TOP_K
    )
    if not isinstance(hits, list):
        raise _malformed(call, "no `query.search` list")
    summaries = []
    for hit in hits[:WIKIPEDIA_TOP_K]:
        title = hit.get("title") if isinstance(hit, dict) else None
        if not title:
            continue
        pages = await _wiki_query(
            call, api, "pages", prop="extracts", exintro=1, explaintext=1, redirects=1, titles=title
        )
        if not isinstance(pages, dict):
            raise _malformed(call, "no `query.pages` mapping")
        for entry in pages.values():
            if isinstance(entry, dict) and entry.get("extract"):
                summaries.append(f"Page: {entry.get('title', title)}\nSummary: {entry['extract']}")
    text = "\n\n".join(summaries) or "No good Wikipedia Search Result was found"
    return ToolResult().add_text(text)


async def _wiki_query(call: ToolCall, api: str, part: str, **params: Any) -> Any:
    """`action=query` of the MediaWiki API; its `query.<part>` (None when the answer has none)."""
    found = (
        await call.http.request("GET", api, params={"action": "query", **params, "format": "json"})
    ).json()
    return found.get("query", {}).get(part) if isinstance(found, dict) else None


TAVILY_TOOLS = (
    Tool(
        "tavily_search",
        "Search the web with Tavily.",
        (
            param("query", required=True),
            ToolParameter("search_depth", "select", default="basic", options=("basic", "advanced")),
            ToolParameter(
                "topic", "select", default="general", options=("general", "news", "finance")
            ),
            param("max_results", "number", default=5),
            param("include_answer", "boolean", default=False),
            param("include_images", "boolean", default=False),
            param("include_raw_content", "boolean", default=False),
            param("include_domains"),
            param("exclude_domains"),
        ),
        _tavily_search,
    ),
)
SEARXNG_TOOLS = (
    Tool(
        "searxng_search",
        "Search with a SearXNG instance.",
        (
            param("query", required=True),
            param("search_type", default="general"),
            param("language"),
            param("time_range"),
        ),
        _searxng_search,
    ),
)
WIKIPEDIA_TOOLS = (
    Tool(
        "wikipedia_search",
        "Search Wikipedia and answer with the top pages' summaries.",
        (param("query", required=True), param("language", default="en")),
        _wikipedia_search,
    ),
)
