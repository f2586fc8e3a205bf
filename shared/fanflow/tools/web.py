"""Reading web pages: Dify's `jina` (reader), `firecrawl` (scrape) and `webscraper` providers.

- jina_reader: ``GET {base}/{url}`` with ``Accept: application/json`` and the reader's
  ``X-*`` option headers (key optional, as a bearer); the text is the reader's JSON answer,
  as Dify gives it.
- firecrawl scrape: ``POST {base}/v1/scrape`` with ``{url, formats, onlyMainContent,
  includeTags, excludeTags, headers, waitFor, timeout}``; text is ``data.markdown``, json the
  whole answer.
- webscraper: fetches the workflow's URL itself (behind the SSRF guard, no trusted host) and
  answers with its title and text.
"""

from __future__ import annotations

import json
from typing import Any

from bs4 import BeautifulSoup

from fanflow.tools.base import Tool, ToolCall, ToolError, ToolResult, not_configured, param

__all__ = ["FIRECRAWL_TOOLS", "JINA_TOOLS", "WEBSCRAPER_TOOLS"]

JINA_READER = "https://r.jina.ai"
FIRECRAWL = "https://api.firecrawl.dev"
_JINA_FLAGS = {
    "image_caption": "X-With-Generated-Alt",
    "gather_all_links_at_the_end": "X-With-Links-Summary",
    "gather_all_images_at_the_end": "X-With-Images-Summary",
    "no_cache": "X-No-Cache",
}
_USER_AGENT = "Mozilla/5.0 (compatible; fanflow webscraper)"


async def _jina_reader(params: dict[str, Any], call: ToolCall) -> ToolResult:
    if params.get("summary"):
        raise ToolError(
            f"{call.label}: jina_reader's summary needs an LLM summariser, which fanflow's "
            "tools do not have; set summary to false",
            error_type="NotSupportedError",
        )
    headers = {"Accept": "application/json"}
    if call.config.api_key:
        headers["Authorization"] = f"Bearer {call.config.api_key}"
    for name, header in (
        ("target_selector", "X-Target-Selector"),
        ("wait_for_selector", "X-Wait-For-Selector"),
        ("proxy_server", "X-Proxy-Url"),
    ):
        if params.get(name):
            headers[header] = str(params[name])
    for name, header in _JINA_FLAGS.items():
        if params.get(name):
            headers[header] = "true"
    extra: dict[str, Any] = {}
    if params.get("request_params"):
        try:
            extra = json.loads(str(params["request_params"]))
        except ValueError:
            raise ToolError(f"{call.label}: request_params must be a JSON object") from None
    base = call.config.base_url or JINA_READER
    reply = await call.http.request(
        "GET", f"{base}/{params['url']}", headers=headers, params=extra, timeout_s=60.0
    )
    return ToolResult().add_text(reply.text)


def _array(value: Any) -> list[str] | None:
    if value in (None, ""):
        return None
    if isinstance(value, list):
        return [str(v) for v in value]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _json_param(value: Any, name: str, call: ToolCall) -> Any:
    if value in (None, ""):
        return None
    if isinstance(value, dict | list):
        return value
    try:
        return json.loads(str(value))
    except ValueError:
        raise ToolError(f"{call.label}: {name} must be JSON, got {str(value)[:80]!r}") from None


async def _firecrawl_scrape(params: dict[str, Any], call: ToolCall) -> ToolResult:
    if not call.config.api_key and not call.config.base_url:
        raise not_configured(
            call,
            "provider firecrawl has no api key: give providers.firecrawl.api_key_env "
            "(or a self-hosted base_url)",
        )
    payload: dict[str, Any] = {
        "url": params["url"],
        "formats": _array(params.get("formats")),
        "onlyMainContent": bool(params.get("onlyMainContent", True)),
        "includeTags": _array(params.get("includeTags")),
        "excludeTags": _array(params.get("excludeTags")),
        "headers": _json_param(params.get("headers"), "headers", call),
        "waitFor": params.get("waitFor"),
        "timeout": params.get("timeout"),
    }
    extract = {
        "schema": _json_param(params.get("schema"), "schema", call),
        "systemPrompt": params.get("systemPrompt"),
        "prompt": params.get("prompt"),
    }
    extract = {k: v for k, v in extract.items() if v not in (None, "")}
    if extract:
        payload["extract"] = extract
    payload = {k: v for k, v in payload.items() if v not in (None, "")}
    headers = {"Authorization": f"Bearer {call.config.api_key}"} if call.config.api_key else {}
    base = call.config.base_url or FIRECRAWL
    reply = await call.http.request(
        "POST", f"{base}/v1/scrape", headers=headers, json_body=payload, timeout_s=90.0
    )
    answer = reply.json()
    if not isinstance(answer, dict) or not answer.get("success", True):
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise ToolError(f"{call.label}: firecrawl could not scrape {params['url']}: {error}")
    data = answer.get("data")
    if not isinstance(data, dict):
        data = {}
    return ToolResult().add_text(str(data.get("markdown") or "")).add_json(answer)


async def _webscraper(params: dict[str, Any], call: ToolCall) -> ToolResult:
    user_agent = str(params.get("user_agent") or _USER_AGENT)
    reply = await call.http.request(
        "GET", str(params["url"]), headers={"User-Agent": user_agent}, trusted=False
    )
    soup = BeautifulSoup(reply.text, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else ""
    lines = [line.strip() for line in soup.get_text("\n").splitlines()]
    text = "\n".join(line for line in lines if line)
    if params.get("generate_summary"):
        raise ToolError(
            f"{call.label}: webscraper's generate_summary needs an LLM; set it to false",
            error_type="NotSupportedError",
        )
    return ToolResult().add_text(f"URL: {params['url']}\nTITLE: {title}\nTEXT: {text}")


JINA_TOOLS = (
    Tool(
        "jina_reader",
        "Read a web page as LLM-friendly text with Jina Reader.",
        (
            param("url", required=True),
            param("request_params"),
            param("target_selector"),
            param("wait_for_selector"),
            param("image_caption", "boolean", default=False),
            param("gather_all_links_at_the_end", "boolean", default=False),
            param("gather_all_images_at_the_end", "boolean", default=False),
            param("proxy_server"),
            param("no_cache", "boolean", default=False),
            param("summary", "boolean", default=False),
            param("max_retries", "number", default=3),
        ),
        _jina_reader,
    ),
)
FIRECRAWL_TOOLS = (
    Tool(
        "scrape",
        "Scrape one page into markdown with Firecrawl.",
        (
            param("url", required=True),
            param("formats", default="markdown"),
            param("onlyMainContent", "boolean", default=True),
            param("includeTags"),
            param("excludeTags"),
            param("headers"),
            param("waitFor", "number", default=0),
            param("timeout", "number", default=30000),
            param("schema"),
            param("systemPrompt"),
            param("prompt"),
        ),
        _firecrawl_scrape,
    ),
)
WEBSCRAPER_TOOLS = (
    Tool(
        "webscraper",
        "Fetch a web page and answer with its title and text.",
        (
            param("url", required=True),
            param("user_agent"),
            param("generate_summary", "boolean", default=False),
        ),
        _webscraper,
    ),
)
