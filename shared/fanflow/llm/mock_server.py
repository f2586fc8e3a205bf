"""`fanflow mock-llm`: an OpenAI-compatible chat completions server for tests and demos.

Routes: `POST /v1/chat/completions` (also without `/v1`), `GET /v1/models`, `GET /health`,
`GET /stats` (requests and injected faults, to compare with fanflow's metrics),
`GET /requests` (the last requests received, for checking what a node sent) and
`POST /reset` (zero both).

The answer to a request, first rule that applies:

1. a `--replies` file rule matching the request (by `model`, `node` — the
   `X-Fanflow-Node-Id` or `X-Oracle-Node-Id` header — and/or `contains`, a text the last
   user message holds) gives `text`, `json`, `tool_call: {name, arguments}`, or
   `error` + `status`;
2. `tools` offered (and `tool_choice` not `none`): a call to the chosen or first tool, its
   arguments built from the tool's JSON schema;
3. `response_format` `json_schema`: an object built from the schema; `json_object`: an object;
4. a question-classifier document (`input_text` + `categories`): the first category whose
   name the text holds, else one picked by hash;
5. `--mode`: `hash` (`mock-` + a hash of the messages), `echo` (the last user message) or
   `fixed` (`--reply`).

The same request always gets the same answer. Faults are drawn per request from an RNG
seeded with `--seed`: 503, 429 with `Retry-After`, a reply held past the client's timeout,
or a malformed reply (an invalid JSON body, or invalid JSON content when JSON was asked
for). Usage counts whitespace-separated words.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from fanflow.llm.mock_replies import build_reply, completion_payload, load_replies

FAULTS = ("status_5xx", "status_429", "timeout", "malformed")
MODES = ("hash", "echo", "fixed")
__all__ = ["MockOptions", "create_app", "load_replies", "serve"]


@dataclass(frozen=True)
class MockOptions:
    mode: str = "hash"
    reply: str = "mock reply"
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    timeout_rate: float = 0.0
    malformed_rate: float = 0.0
    retry_after_s: float = 1.0
    timeout_sleep_s: float = 30.0
    seed: int = 0
    #: when set, requests must carry `Authorization: Bearer <api_key>`
    api_key: str | None = None
    replies: tuple[Mapping[str, Any], ...] = ()
    log_size: int = 1000

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        rates = (self.error_rate, self.rate_limit_rate, self.timeout_rate, self.malformed_rate)
        if any(rate < 0 for rate in rates) or sum(rates) > 1:
            raise ValueError("fault rates must be >= 0 and add up to at most 1")


@dataclass
class _State:
    options: MockOptions
    faults_rng: random.Random = field(init=False)
    jitter_rng: random.Random = field(init=False)
    stats: dict[str, Any] = field(init=False)
    log: collections.deque[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.faults_rng = random.Random(self.options.seed)
        self.jitter_rng = random.Random(self.options.seed + 1)
        self.stats = {
            "requests": 0,
            "succeeded": 0,
            "rejected": 0,
            "faults": dict.fromkeys(FAULTS, 0),
            "by_model": {},
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        self.log = collections.deque(maxlen=self.options.log_size)

    def draw_fault(self) -> str | None:
        o = self.options
        point = self.faults_rng.random()
        for fault, rate in zip(
            FAULTS, (o.error_rate, o.rate_limit_rate, o.timeout_rate, o.malformed_rate), strict=True
        ):
            if point < rate:
                return fault
            point -= rate
        return None


def create_app(options: MockOptions) -> FastAPI:
    """The mock as an ASGI app (serve it with uvicorn, or `serve()`)."""
    state = _State(options)
    app = FastAPI(title="fanflow mock-llm", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return state.stats

    @app.get("/requests")
    async def requests() -> list[dict[str, Any]]:
        return list(state.log)

    @app.post("/reset")
    async def reset() -> dict[str, str]:
        state.reset()
        return {"result": "success"}

    @app.get("/v1/models")
    @app.get("/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": "mock", "object": "model", "owned_by": "fanflow"}],
        }

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def completions(request: Request) -> Response:
        return await _complete(state, request)

    return app


async def _complete(state: _State, request: Request) -> Response:
    options = state.options
    stats = state.stats
    stats["requests"] += 1
    fault = state.draw_fault()  # before any await: the draw order is the arrival order
    delay_ms = options.latency_ms + state.jitter_rng.uniform(0, options.jitter_ms)
    record: dict[str, Any] = {
        "seq": stats["requests"],
        "authorization": request.headers.get("authorization"),
        "node_id": _node_id(request),
        "fault": fault,
    }
    state.log.append(record)
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    record["body"] = body
    if options.api_key and record["authorization"] != f"Bearer {options.api_key}":
        return _rejected(state, record, 401, "invalid API key", "invalid_request_error")
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return _rejected(
            state, record, 400, "the body must be JSON with `messages`", "invalid_request_error"
        )
    if body.get("stream"):
        return _rejected(state, record, 400, "mock-llm does not stream", "invalid_request_error")
    model = str(body.get("model") or "mock")
    stats["by_model"][model] = stats["by_model"].get(model, 0) + 1
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)

    if fault == "status_5xx":
        stats["faults"][fault] += 1
        return _error(503, "injected fault: service unavailable", "server_error")
    if fault == "status_429":
        stats["faults"][fault] += 1
        headers = {"Retry-After": f"{options.retry_after_s:g}"}
        return _error(429, "injected fault: rate limited", "rate_limit_exceeded", headers)
    if fault == "timeout":
        stats["faults"][fault] += 1
        await asyncio.sleep(options.timeout_sleep_s)
    reply = build_reply(body, record["node_id"], options)
    if "error" in reply:
        record["status"] = int(reply.get("status") or 500)
        return _error(record["status"], str(reply["error"]), "mock_error")
    payload = completion_payload(body, reply)
    if fault == "malformed":
        stats["faults"][fault] += 1
        if _asks_for_json(body):
            payload["choices"][0]["message"]["content"] = '{"truncated": '
            return JSONResponse(payload)
        text = json.dumps(payload)
        return Response(text[: len(text) // 2], media_type="application/json")
    stats["succeeded"] += 1
    stats["prompt_tokens"] += payload["usage"]["prompt_tokens"]
    stats["completion_tokens"] += payload["usage"]["completion_tokens"]
    record["status"] = 200
    return JSONResponse(payload)


def _node_id(request: Request) -> str | None:
    return request.headers.get("x-fanflow-node-id") or request.headers.get("x-oracle-node-id")


def _rejected(
    state: _State, record: dict[str, Any], status: int, message: str, kind: str
) -> Response:
    state.stats["rejected"] += 1
    record["status"] = status
    record["fault"] = None
    return _error(status, message, kind)


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"error": {"message": message, "type": kind}}, status_code=status, headers=headers
    )


def _asks_for_json(body: Mapping[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, Mapping) and response_format.get("type") in (
        "json_schema",
        "json_object",
    )


def serve(
    options: MockOptions,
    *,
    host: str = "127.0.0.1",
    port: int = 8399,
    port_file: Path | None = None,
) -> None:
    """Serve until interrupted. Port 0 picks a free port; `port_file` receives the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # accept (queue) connections from here on
    bound = sock.getsockname()[1]
    if port_file is not None:
        port_file.write_text(str(bound), encoding="utf-8")
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"fanflow mock-llm listening on http://{shown}:{bound}/v1", flush=True)
    config = uvicorn.Config(
        create_app(options), log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    uvicorn.Server(config).run(sockets=[sock])
