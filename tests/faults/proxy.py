"""A TCP proxy that can partition the network: `partition()` stops forwarding in both
directions without closing anything (neither side sees a FIN or a reset, as when a cable is
cut); `heal()` forwards again. New connections during a partition are accepted and held
without reaching the upstream.

Runs its own event loop in a thread, so the test's loop (or a blocking call in the test)
never stalls the traffic it forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.faults.ports import free_port


class TcpProxy:
    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._open = threading.Event()
        self._open.set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    @property
    def partitioned(self) -> bool:
        return not self._open.is_set()

    def partition(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            while self.partitioned:
                await asyncio.sleep(0.05)
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(upstream_writer)
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        except OSError:
            pass
        finally:
            self._connections.discard(task)
            for stream in (writer, upstream_writer):
                if stream is not None:
                    stream.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            # a partition also swallows the end of a stream: nobody hears of a close
            while self.partitioned:
                await asyncio.sleep(0.05)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    def close(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._connections):
                task.cancel()
            for task in list(self._connections):
                with contextlib.suppress(BaseException):
                    await task
            # every transport closed on this loop before it closes (else ResourceWarnings)
            for writer in self._writers:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

        self.heal()
        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
