"""Scheduler events and stored runs in the shapes of Dify's Service API.

The scheduler's `Emit` data carries `node_id`, `node_type`, `title`, `scope` (plus
`<container>_id` / `<container>_index` inside an iteration or loop, and per event `status`,
`outputs`, `error`, `index`, `count`, `rounds`, `retry_index`, `text`); the event body adds
`at`, the commit time. `StreamFormatter` adds what Dify's clients expect: execution ids,
sequence indexes, timestamps and elapsed times, and drops duplicated deliveries.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fanflow.mesh.amqp import Event
from fanflow.store import AppRecord, RunRecord, node_execution_id

WORKFLOW_FINISHED = "workflow_finished"
STREAMED_EVENTS = frozenset(
    {
        "workflow_started",
        "node_started",
        "node_finished",
        "node_retry",
        "iteration_started",
        "iteration_next",
        "iteration_completed",
        "loop_started",
        "loop_next",
        "loop_completed",
        "text_chunk",
        WORKFLOW_FINISHED,
    }
)


def _ts(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds)


def execution_id(run_id: str, scope: str, node_id: str) -> str:
    """A node execution's UUID, derived from the store's execution id (stable across events)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, node_execution_id(run_id, scope, node_id)))


def end_user_id(app_id: str, user: str | None) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fanflow:{app_id}:end-user:{user or ''}"))


# ---- stored runs ---------------------------------------------------------------------


def _run_summary(run: RunRecord) -> dict[str, Any]:
    """The run-level fields `WorkflowFinishedData` and a log item's `workflow_run` share."""
    return {
        "status": run.status,
        "error": run.error,
        "elapsed_time": run.elapsed_time or 0.0,
        "total_tokens": run.total_tokens,
        "total_steps": run.total_steps,
        "created_at": _ts(run.created_at),
        "finished_at": _ts(run.finished_at),
        "exceptions_count": run.exceptions_count,
    }


def finished_data(run: RunRecord, *, streaming: bool = False) -> dict[str, Any]:
    """`WorkflowFinishedData`: the blocking answer's `data`, the last event's `data`."""
    data: dict[str, Any] = {
        "id": run.id,
        "workflow_id": run.app_id,
        "outputs": run.outputs,
        **_run_summary(run),
    }
    if streaming:
        data["files"] = []
        data["created_by"] = {"id": end_user_id(run.app_id, run.user), "user": run.user}
    return data


def blocking_response(run: RunRecord) -> dict[str, Any]:
    return {"task_id": run.id, "workflow_run_id": run.id, "data": finished_data(run)}


def run_detail(run: RunRecord) -> dict[str, Any]:
    """`WorkflowRunDetailResponse`: `inputs` is a JSON string there, `outputs` an object."""
    return {
        "id": run.id,
        "workflow_id": run.app_id,
        "status": run.status,
        "inputs": json.dumps(run.inputs, ensure_ascii=False),
        "outputs": run.outputs or {},
        "error": run.error,
        "total_steps": run.total_steps,
        "total_tokens": run.total_tokens,
        "created_at": _ts(run.created_at),
        "finished_at": _ts(run.finished_at),
        "elapsed_time": run.elapsed_time,
        "exceptions_count": run.exceptions_count,
        # fanflow: how often the run was redriven from its failed nodes
        "redrive_count": run.redrive_count,
    }


def _version(app: AppRecord) -> str:
    # an app's DSL never changes after import: its import time names its only version
    return datetime.fromtimestamp(app.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def log_item(run: RunRecord, app: AppRecord) -> dict[str, Any]:
    """`WorkflowLogItem` (one per run: a run-level summary)."""
    return {
        "id": run.id,
        "workflow_run": {
            "id": run.id,
            "version": _version(app),
            **_run_summary(run),
            "triggered_from": "app-run",
        },
        "created_from": "service-api",
        "created_by_role": "end_user",
        "created_by_account": None,
        "created_by_end_user": {
            "id": end_user_id(app.id, run.user),
            "type": "service-api",
            "is_anonymous": False,
            "session_id": run.user,
        },
        "created_at": _ts(run.created_at),
        "details": None,
    }


def logs_page(
    runs: list[RunRecord], total: int, app: AppRecord, *, page: int, limit: int
) -> dict[str, Any]:
    return {
        "page": page,
        "limit": limit,
        "total": total,
        "has_more": page * limit < total,
        "data": [log_item(run, app) for run in runs],
    }


# ---- streams -------------------------------------------------------------------------


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False, default=str)}\n\n".encode()


PING = b"event: ping\n\n"


class StreamFormatter:
    """One stream's converter: scheduler event → Dify SSE payload, duplicates dropped.

    Events carry deterministic keys; a redelivered one repeats (event, scope, node, index,
    retry index, status) and is dropped.
    """

    def __init__(self, run_id: str, *, workflow_id: str) -> None:
        self.run_id = run_id
        self.workflow_id = workflow_id
        self._seen: set[tuple[Any, ...]] = set()
        self._started: dict[tuple[str, str], tuple[float, int]] = {}
        self._index = 0

    def envelope(self, event: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "event": event,
            "task_id": self.run_id,
            "workflow_run_id": self.run_id,
            "data": data,
            **extra,
        }

    def error(self, status: int, code: str, message: str) -> dict[str, Any]:
        return {
            "event": "error",
            "task_id": self.run_id,
            "workflow_run_id": self.run_id,
            "status": status,
            "code": code,
            "message": message,
        }

    def finished(self, run: RunRecord) -> dict[str, Any]:
        return self.envelope(WORKFLOW_FINISHED, finished_data(run, streaming=True))

    def is_new(self, event: Event) -> bool:
        """False for an event this stream has seen already (or one it does not stream)."""
        if event.name not in STREAMED_EVENTS:
            return False
        data = event.payload.get("data") or {}
        key = (
            event.name,
            data.get("scope"),
            data.get("node_id"),
            data.get("index"),
            data.get("retry_index"),
            data.get("status"),
        )
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def convert(self, event: Event) -> dict[str, Any]:
        """The Dify payload of a new event (`workflow_finished` is built from the store)."""
        data: dict[str, Any] = event.payload.get("data") or {}
        at = float(event.payload.get("at") or time.time())
        if event.name == "workflow_started":
            return self.envelope(
                event.name,
                {
                    "id": self.run_id,
                    "workflow_id": self.workflow_id,
                    "inputs": data.get("inputs") or {},
                    "created_at": _ts(at),
                    "reason": "initial",
                },
            )
        if event.name == "text_chunk":
            node_id = data.get("node_id")
            return self.envelope(
                event.name,
                {"text": data.get("text", ""), "from_variable_selector": [node_id, "answer"]},
            )
        return self.envelope(event.name, self._node_data(event.name, data, at))

    def _node_data(self, name: str, data: dict[str, Any], at: float) -> dict[str, Any]:
        scope, node_id = str(data.get("scope", "")), str(data.get("node_id", ""))
        out: dict[str, Any] = {
            "id": execution_id(self.run_id, scope, node_id),
            "node_id": node_id,
            "node_type": data.get("node_type"),
            "title": data.get("title"),
        }
        for container in ("iteration", "loop"):
            if f"{container}_id" in data:
                out[f"{container}_id"] = data[f"{container}_id"]
                out[f"{container}_index"] = data.get(f"{container}_index")
        if name == "node_started":
            self._index += 1
            self._started[(scope, node_id)] = (at, self._index)
        started_at, index = self._started.get((scope, node_id), (at, self._index))
        timing = {
            "created_at": _ts(started_at),
            "finished_at": _ts(at),
            "elapsed_time": round(max(0.0, at - started_at), 6),
        }
        if name == "node_started":
            out.update(index=index, predecessor_node_id=None, inputs=None, extras={})
            out["created_at"] = _ts(at)
        elif name in ("node_finished", "node_retry"):
            out.update(
                index=index,
                predecessor_node_id=None,
                inputs=None,
                process_data=None,
                outputs=data.get("outputs"),
                status="retry" if name == "node_retry" else data.get("status"),
                error=data.get("error"),
                execution_metadata={"total_tokens": data.get("total_tokens", 0)},
                files=[],
                **timing,
            )
            if name == "node_retry":
                out["retry_index"] = data.get("retry_index")
        elif name in ("iteration_started", "loop_started"):
            metadata = {"iterator_length": data["count"]} if "count" in data else {}
            out.update(inputs={}, metadata=metadata, extras={}, created_at=_ts(at))
        elif name in ("iteration_next", "loop_next"):
            out.update(index=data.get("index"), extras={}, created_at=_ts(at))
            out["pre_loop_output" if name == "loop_next" else "pre_iteration_output"] = None
        else:  # iteration_completed, loop_completed
            out.update(
                inputs={},
                outputs=None,
                extras={},
                status=data.get("status"),
                error=data.get("error"),
                total_tokens=0,
                execution_metadata={},
                steps=data.get("count", data.get("rounds", 0)),
                **timing,
            )
        return out
