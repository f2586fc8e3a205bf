"""A minimal OpenAI-compatible upstream for benchmarks: thousands of answers per second.

    .venv/bin/python benchmarks/fast_upstream.py --port 0 --port-file up.port --latency-ms 200

Raw asyncio protocol, HTTP/1.1 keep-alive, one fixed chat completion for every POST after
`--latency-ms`; `GET /stats` answers `{"connections", "requests"}` (TCP connections
accepted, requests answered). Not `fanflow mock-llm` (FastAPI + uvicorn): its own ceiling
would be what a benchmark measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

_REPLY = json.dumps(
    {
        "id": "bench",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()
STATS = {"connections": 0, "requests": 0}


def _response(body: bytes) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


class _Connection(asyncio.Protocol):
    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        STATS["connections"] += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").lower()
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            if head.startswith("get /stats"):
                self._send(_response(json.dumps(STATS).encode()))
            elif self.latency_s > 0:
                asyncio.get_running_loop().call_later(self.latency_s, self._answer)
            else:
                self._answer()

    def _answer(self) -> None:
        STATS["requests"] += 1
        self._send(_response(_REPLY))

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def serve(port: int, latency_ms: float, port_file: Path | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(latency_ms / 1000), "127.0.0.1", port, backlog=1024
    )
    bound = server.sockets[0].getsockname()[1]
    if port_file is not None:
        port_file.write_text(str(bound))
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--port-file", type=Path)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.latency_ms, args.port_file))


if __name__ == "__main__":
    main()
