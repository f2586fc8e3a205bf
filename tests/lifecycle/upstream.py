"""A counting HTTP upstream for the lifecycle tests: `GET /item/N` answers `N*N+1`, except
for the items told to fail, whose connection is closed without an answer; `GET /slow/MS`
answers after MS milliseconds and records whether the caller hung up first."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Upstream:
    url: str = ""
    failing: set[int] = field(default_factory=set)
    #: a failing item's connection is reset after this long (lets the other items finish)
    fail_delay_s: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    #: paths whose caller closed the connection before the answer
    hung_up: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        path = head.split(b" ", 2)[1].decode()
        self.requests[path] += 1
        _, kind, value = path.split("/", 2)
        body = b""
        if kind == "slow":
            waiter = asyncio.ensure_future(asyncio.sleep(int(value) / 1000))
            closed = asyncio.ensure_future(reader.read())  # b"" once the caller hangs up
            done, _ = await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
            if closed in done:
                waiter.cancel()
                self.hung_up.append(path)
                writer.close()
                return
            closed.cancel()
            body = f"slow {value}".encode()
        elif int(value) in self.failing:
            await asyncio.sleep(self.fail_delay_s)
            writer.transport.abort()  # no answer: the caller sees the connection reset
            return
        else:
            body = str(int(value) ** 2 + 1).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def running_upstream() -> AsyncIterator[Upstream]:
    upstream = Upstream()
    server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream.url = f"http://127.0.0.1:{port}"
    try:
        yield upstream
    finally:
        server.close()
