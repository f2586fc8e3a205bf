"""The `document-extractor` node: the text of a file variable, or of each file of a list.

Fields as in Dify: `variable_selector` (a file, or an array of files) and `is_array_file`.
Output `text`: a string for one file, an array of strings for a list (empty list: `[]`).
A file's bytes are fetched from its `remote_url` (or `url`) through the SSRF guard and the
upstream's breaker and limits (`host:<host>`), at most `MAX_FILE_BYTES` (Dify's upload
limit, 15 MiB); files uploaded to Dify itself (`local_file` without a URL) have nothing to
fetch here. Parsing (`fanflow.nodes.documents`) runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from fanflow.context import ExecutionContext, ExecutionOutcome, node_label
from fanflow.errors import NodeError
from fanflow.executors.outbound import context_pool, tool_http
from fanflow.messages import NodeTask
from fanflow.nodes.documents import DocumentError, UnsupportedDocument, document_type, extract_text
from fanflow.tools.http import ToolHttp

__all__ = ["MAX_FILE_BYTES", "check_document_extractor", "run_document_extractor"]

MAX_FILE_BYTES = 15 * 1024 * 1024


def check_document_extractor(data: Mapping[str, Any], problems: list[str]) -> None:
    selector = data.get("variable_selector")
    if not (
        isinstance(selector, list)
        and len(selector) >= 2
        and all(isinstance(part, str) and part for part in selector)
    ):
        problems.append(
            f"variable_selector must be a selector like [node_id, name], got {selector!r}"
        )


async def run_document_extractor(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
    label = node_label(task)
    selector = task.data.get("variable_selector") or []
    try:
        value = task.lookup(selector)
    except KeyError:
        raise NodeError(
            f"{label}: File variable not found for selector: {selector}",
            error_type="DocumentExtractorError",
        ) from None
    files = value if isinstance(value, list) else [value]
    if value and not all(isinstance(f, Mapping) for f in files):
        raise NodeError(
            f"{label}: Variable {selector} is not a file or an array of files",
            error_type="DocumentExtractorError",
        )
    async with context_pool(context) as pool:
        http = tool_http(context, pool, provider="document-extractor", label=label)
        texts = [await _text_of(file, http, label) for file in files if file]
    if isinstance(value, list):
        return ExecutionOutcome(outputs={"text": texts})
    return ExecutionOutcome(outputs={"text": texts[0] if texts else ""})


async def _text_of(file: Mapping[str, Any], http: ToolHttp, label: str) -> str:
    name = file.get("filename") or file.get("name") or file.get("remote_url") or "the file"
    try:
        extension = document_type(file)
    except UnsupportedDocument as exc:
        raise NodeError(f"{label}: {name}: {exc}", error_type="UnsupportedFileTypeError") from exc
    url = file.get("remote_url") or file.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise NodeError(
            f"{label}: {name}: no URL to fetch the file from (transfer_method "
            f"{file.get('transfer_method')!r}); fanflow reads remote_url files",
            error_type="FileDownloadError",
        )
    reply = await http.request("GET", url, trusted=False, max_bytes=MAX_FILE_BYTES)
    try:
        return await asyncio.to_thread(extract_text, reply.content, extension)
    except UnsupportedDocument as exc:
        raise NodeError(f"{label}: {name}: {exc}", error_type="UnsupportedFileTypeError") from exc
    except DocumentError as exc:
        raise NodeError(f"{label}: {name}: {exc}", error_type="TextExtractionError") from exc
