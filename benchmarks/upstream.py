"""A fast local upstream with a fixed latency: OpenAI-compatible chat completions and GET.

    python -m benchmarks.upstream --delay-ms 200 [--port 0] [--port-file F] [--max-seconds 3600]

Raw asyncio streams, HTTP/1.1 keep-alive, one prebuilt reply per route, so the server
stays far from being the bottleneck (`ceiling()` measures how far: the benchmarks print
it). Routes, any method: `POST .../chat/completions` → a fixed chat completion (content
"ok"); `GET /health` → `ok` without the delay; any other request → `ok` (text/plain) after
the delay. `Upstream` runs it as a subprocess for a `with` block.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


def _response(body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


_CHAT = _response(_COMPLETION, "application/json")
_PLAIN = _response(b"ok", "text/plain")
_MAX_HEADER_LINES = 100


async def _serve(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float
) -> None:
    try:
        while True:
            request_line = await reader.readline()
            if not request_line:
                return
            length = 0
            close = False
            for _ in range(_MAX_HEADER_LINES):
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
            target = request_line.split(b" ", 2)[1] if b" " in request_line else b"/"
            if target == b"/health":
                writer.write(_PLAIN)
            else:
                if delay_s:
                    await asyncio.sleep(delay_s)
                writer.write(_CHAT if target.endswith(b"/chat/completions") else _PLAIN)
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
        return
    finally:
        writer.close()


async def serve(*, delay_ms: float, port: int, port_file: Path | None, max_seconds: float) -> None:
    """Serve on 127.0.0.1:`port` (0: a free one, written to `port_file`) for `max_seconds`."""
    delay_s = delay_ms / 1000
    server = await asyncio.start_server(
        lambda r, w: _serve(r, w, delay_s), "127.0.0.1", port, backlog=4096
    )
    bound = server.sockets[0].getsockname()[1]
    if port_file is not None:
        port_file.write_text(str(bound))
    print(f"upstream: http://127.0.0.1:{bound} delay {delay_ms:g} ms", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_seconds)


async def _client(port: int, path: bytes, deadline: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    is_chat = path.endswith(b"/chat/completions")
    body = b'{"model":"bench","messages":[{"role":"user","content":"hi"}]}' if is_chat else b""
    method = b"POST" if is_chat else b"GET"
    request = (
        method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    try:
        while time.monotonic() < deadline:
            writer.write(request)
            await writer.drain()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            counts[0] += 1
    finally:
        writer.close()


async def _ceiling(port: int, path: str, concurrency: int, seconds: float) -> float:
    counts = [0]
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(
        *(_client(port, path.encode(), deadline, counts) for _ in range(concurrency))
    )
    return counts[0] / (time.monotonic() - started)


def ceiling(
    port: int, *, path: str = "/v1/chat/completions", concurrency: int = 50, seconds: float = 2.0
) -> float:
    """Requests/s that `concurrency` keep-alive connections get from the upstream for
    `seconds` (a lower bound on its ceiling: this one-process client is in it too)."""
    return asyncio.run(_ceiling(port, path, concurrency, seconds))


class Upstream:
    """The upstream as a subprocess: `with Upstream(delay_ms=200) as up: up.url ...`."""

    def __init__(self, *, delay_ms: float, max_seconds: float = 3600, log: Path | None = None):
        self.delay_ms = delay_ms
        self.max_seconds = max_seconds
        self.log = log
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (`.../v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Upstream:
        port_file = Path(f"/tmp/fanflow-bench-upstream-{os.getpid()}-{time.monotonic_ns()}.port")
        argv = [
            sys.executable,
            "-m",
            "benchmarks.upstream",
            "--delay-ms",
            str(self.delay_ms),
            "--port-file",
            str(port_file),
            "--max-seconds",
            str(self.max_seconds),
        ]
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        root = Path(__file__).resolve().parents[1]
        self.process = subprocess.Popen(argv, cwd=root, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while not (port_file.exists() and port_file.read_text()):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the upstream did not start (exit {self.process.poll()})")
                time.sleep(0.02)
            self.port = int(port_file.read_text())
        except BaseException:
            self.stop()
            raise
        finally:
            port_file.unlink(missing_ok=True)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    asyncio.run(
        serve(
            delay_ms=args.delay_ms,
            port=args.port,
            port_file=args.port_file,
            max_seconds=args.max_seconds,
        )
    )


if __name__ == "__main__":
    main()
