"""The `knowledge-retrieval` node against Dify's External Knowledge API.

Each of the node's `dataset_ids` must be configured under `datasets:` in the tools file
(`FANFLOW_TOOLS_FILE`): an endpoint, the external `knowledge_id` and a key. The node sends
``POST {endpoint}/retrieval`` with ``{knowledge_id, query, retrieval_setting: {top_k,
score_threshold}}`` (bearer key) to each dataset, merges the records and, as Dify does
without a rerank model, orders them by score, drops those under the score threshold and
keeps the top k. Output `result`: Dify's list of ``{metadata, title, content}`` with
``metadata._source = "knowledge"`` and the score and position, which an LLM node's
`context` reads.

`retrieval_mode: single` with one dataset queries it; with several it needs Dify's model
router and is refused. Calls go through `fanflow.tools.http` (upstream
`tool:knowledge:<dataset id>`, breaker, limits, retries, SSRF guard with the configured
endpoint trusted).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fanflow.context import ExecutionContext, ExecutionOutcome, node_label
from fanflow.errors import NodeError
from fanflow.executors.outbound import context_pool, tool_http
from fanflow.executors.tool import catalog_of
from fanflow.messages import NodeTask
from fanflow.resilience.upstreams import UpstreamFailure
from fanflow.tools.catalog import active_catalog
from fanflow.tools.config import DatasetConfig, ProviderConfig
from fanflow.tools.http import ToolHttp
from fanflow.variables import resolve_or_none

__all__ = ["check_knowledge_retrieval", "run_knowledge_retrieval"]

DEFAULT_TOP_K = 4


def check_knowledge_retrieval(data: Mapping[str, Any], problems: list[str]) -> None:
    selector = data.get("query_variable_selector")
    if not (isinstance(selector, list) and len(selector) >= 2):
        problems.append(f"query_variable_selector must be a selector, got {selector!r}")
    ids = data.get("dataset_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        problems.append(f"dataset_ids must be a list of dataset ids, got {ids!r}")
        return
    if not data:
        return
    try:
        configured = active_catalog().datasets
    except Exception as exc:  # the tools file is unreadable: said once, here
        problems.append(str(exc))
        return
    for dataset_id in ids:
        if dataset_id not in configured:
            problems.append(
                f"dataset {dataset_id!r} is not configured: give datasets.{dataset_id} "
                "(endpoint, knowledge_id, api_key_env) in the tools file (FANFLOW_TOOLS_FILE)"
            )


async def run_knowledge_retrieval(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
    label = node_label(task)
    data = task.data
    query = resolve_or_none(task.lookup, data.get("query_variable_selector") or [])
    if not isinstance(query, str) or not query:
        raise NodeError(f"{label}: Query is required.", error_type="KnowledgeRetrievalNodeError")
    ids = [str(i) for i in data.get("dataset_ids") or []]
    configured = catalog_of(context).datasets
    missing = [i for i in ids if i not in configured]
    if missing:
        raise NodeError(
            f"{label}: dataset(s) {', '.join(missing)} not configured in the tools file",
            error_type="NotSupportedError",
        )
    if data.get("retrieval_mode") == "single" and len(ids) > 1:
        raise NodeError(
            f"{label}: retrieval_mode single over {len(ids)} datasets needs Dify's model "
            "router; use multiple",
            error_type="NotSupportedError",
        )
    top_k, threshold = _settings(data)
    records: list[dict[str, Any]] = []
    async with context_pool(context) as pool:
        for dataset_id in ids:
            dataset = configured[dataset_id]
            http = tool_http(
                context,
                pool,
                provider=f"knowledge:{dataset_id}",
                label=label,
                trusted_hosts=ProviderConfig(base_url=dataset.endpoint).trusted_hosts(),
            )
            records.extend(await _retrieve(http, dataset, query, top_k, threshold, label))
    records.sort(key=lambda r: r["metadata"]["score"] or 0.0, reverse=True)
    if threshold is not None:
        records = [r for r in records if (r["metadata"]["score"] or 0.0) >= threshold]
    records = records[:top_k]
    for position, record in enumerate(records, start=1):
        record["metadata"]["position"] = position
    return ExecutionOutcome(outputs={"result": records})


def _settings(data: Mapping[str, Any]) -> tuple[int, float | None]:
    config = data.get("multiple_retrieval_config")
    if data.get("retrieval_mode") == "single" or not isinstance(config, Mapping):
        config = data.get("single_retrieval_config") or {}
    top_k = config.get("top_k") if isinstance(config, Mapping) else None
    threshold = config.get("score_threshold") if isinstance(config, Mapping) else None
    if isinstance(config, Mapping) and config.get("score_threshold_enabled") is False:
        threshold = None
    return (
        int(top_k) if isinstance(top_k, int | float) and top_k > 0 else DEFAULT_TOP_K,
        float(threshold) if isinstance(threshold, int | float) else None,
    )


async def _retrieve(
    http: ToolHttp,
    dataset: DatasetConfig,
    query: str,
    top_k: int,
    threshold: float | None,
    label: str,
) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {dataset.api_key}"} if dataset.api_key else {}
    reply = await http.request(
        "POST",
        f"{dataset.endpoint}/retrieval",
        headers=headers,
        json_body={
            "knowledge_id": dataset.knowledge_id,
            "query": query,
            "retrieval_setting": {"top_k": top_k, "score_threshold": threshold or 0.0},
        },
    )
    answer = reply.json()
    raw = answer.get("records") if isinstance(answer, dict) else None
    if not isinstance(raw, list):
        raise UpstreamFailure(
            f"{label}: dataset {dataset.dataset_id}: malformed answer: no `records` list",
            reason="format",
            retryable=False,
            error_type="KnowledgeRetrievalNodeError",
        )
    found = []
    for record in raw:
        if not isinstance(record, dict):
            continue
        title = str(record.get("title") or "")
        metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        score = record.get("score")
        found.append(
            {
                "metadata": {
                    "_source": "knowledge",
                    "dataset_id": dataset.dataset_id,
                    "dataset_name": dataset.name,
                    "document_id": (metadata or {}).get("document_id") or title,
                    "document_name": title,
                    "data_source_type": "external",
                    "retriever_from": "workflow",
                    "score": float(score) if isinstance(score, int | float) else None,
                    "doc_metadata": metadata,
                },
                "title": title,
                "content": str(record.get("content") or ""),
            }
        )
    return found
