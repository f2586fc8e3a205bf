"""An OpenAI-compatible fake with a provider's quota: at most `limit` requests in any
sliding `window_s`; past it, 429 with Retry-After. `GET /stats` counts answers.

    python -m tests.resilience.quota_server PORT_FILE LIMIT WINDOW_S
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def app_for(limit: int, window_s: float) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    accepted: collections.deque[float] = collections.deque()
    stats = {"ok": 0, "429": 0}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/stats":
            await _answer(send, 200, stats)
            return
        now = time.monotonic()
        while accepted and accepted[0] <= now - window_s:
            accepted.popleft()
        if len(accepted) >= limit:
            stats["429"] += 1
            await _answer(send, 429, {"error": {"message": "quota exceeded"}}, retry_after="1")
            return
        accepted.append(now)
        stats["ok"] += 1
        await asyncio.sleep(0.02)
        await _answer(
            send,
            200,
            {
                "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )

    return app


async def _answer(send: Send, status: int, body: Any, retry_after: str | None = None) -> None:
    headers = [(b"content-type", b"application/json")]
    if retry_after:
        headers.append((b"retry-after", retry_after.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def main(port_file: str, limit: str, window_s: str) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    with open(port_file, "w") as out:
        out.write(str(sock.getsockname()[1]))
    config = uvicorn.Config(app_for(int(limit), float(window_s)), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main(*sys.argv[1:])
