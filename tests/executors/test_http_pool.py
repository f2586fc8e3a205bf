"""Pooled HTTP connections: LLM and http-request calls reuse kept-alive TCP connections.

A real HTTP/1.1 keep-alive server on loopback counts the TCP connections it accepts; the
SSRF guard stays on (127.0.0.1 allow-listed) and keeps checking and pinning every request.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from fanflow.dsl.load import load_workflow
from fanflow.executors import ExecutionContext, execute_task
from fanflow.executors.llm import run_llm_node
from fanflow.http_pool import HttpPool, ShardedTransport
from fanflow.llm import Providers
from fanflow.messages import NodeTask
from fanflow.resilience import ssrf
from fanflow.resilience.upstreams import Upstreams
from fanflow.runner import EmbeddedRunner
from fanflow.runtime import RunRequest
from tests.llm.conftest import llm_data, make_task

COMPLETION = {
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "pong"}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


@dataclass
class CountingServer:
    """HTTP/1.1 with keep-alive: POST answers a chat completion, GET /set-cookie sets a
    cookie, any other GET echoes the request's headers."""

    host: str
    port: int = 0
    connections: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: requests answered at once, at most (how many connections were really used together)
    peak_in_flight: int = 0
    delay_s: float = 0.0
    #: hold every answer until this many requests are in flight at once (then answer all)
    hold_until: int = 0
    _in_flight: int = 0
    _gate: asyncio.Event = field(default_factory=asyncio.Event)

    def hold(self, requests: int) -> None:
        """From now on, answer only once `requests` are in flight together."""
        self.hold_until = requests
        self._gate.clear()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((path, headers))
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                if self._in_flight >= self.hold_until:
                    self._gate.set()
                await self._gate.wait()
                await asyncio.sleep(self.delay_s)
                self._in_flight -= 1
                extra = ""
                if method == "POST":
                    body = json.dumps(COMPLETION).encode()
                elif path == "/set-cookie":
                    body, extra = b"{}", "set-cookie: session=secret; Path=/\r\n"
                else:
                    body = json.dumps({"headers": headers}).encode()
                writer.write(
                    f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}"
                    f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        finally:
            writer.close()


ServerFactory = Callable[..., Awaitable[CountingServer]]


@pytest.fixture
async def counting_server() -> AsyncIterator[ServerFactory]:
    servers: list[asyncio.Server] = []

    async def start(host: str = "127.0.0.1", port: int = 0) -> CountingServer:
        counting = CountingServer(host)
        server = await asyncio.start_server(counting.handle, host, port)
        counting.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return counting

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def http_task(url: str) -> NodeTask:
    return NodeTask(
        task_id="run-1/-/http1/0",
        run_id="run-1",
        node_id="http1",
        node_type="http-request",
        node_title="Fetch",
        data={"type": "http-request", "method": "get", "url": url},
    )


def guarded_context(pool: HttpPool, *, allow: tuple[str, ...] = ("127.0.0.1",)) -> ExecutionContext:
    return ExecutionContext(http_pool=pool, http_allow_list=allow, upstreams=Upstreams())


def resolve_as(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]) -> None:
    async def fake(host: str, port: int) -> list[str]:
        if host not in names:
            raise socket.gaierror(f"{host}: unknown in this test")
        return names[host]

    monkeypatch.setattr(ssrf, "resolve_host", fake)


# ---- LLM nodes ----


async def test_sequential_llm_calls_share_one_connection(counting_server: ServerFactory) -> None:
    server = await counting_server()
    providers = Providers(default_base_url=f"http://127.0.0.1:{server.port}/v1", timeout_s=10)
    async with HttpPool() as pool:
        context = ExecutionContext(llm_providers=providers, http_pool=pool, upstreams=Upstreams())
        for _ in range(10):
            outcome = await run_llm_node(
                make_task("llm", llm_data([{"role": "user", "text": "ping"}])), context
            )
            assert outcome.outputs["text"] == "pong"
    assert len(server.requests) == 10
    assert server.connections == 1


async def test_without_a_pool_every_llm_call_connects_anew(counting_server: ServerFactory) -> None:
    server = await counting_server()
    providers = Providers(default_base_url=f"http://127.0.0.1:{server.port}/v1", timeout_s=10)
    context = ExecutionContext(llm_providers=providers)
    for _ in range(3):
        await run_llm_node(make_task("llm", llm_data([{"role": "user", "text": "ping"}])), context)
    assert server.connections == 3  # the baseline the pool improves on


async def test_concurrent_llm_calls_stay_within_the_pools_size(
    counting_server: ServerFactory,
) -> None:
    server = await counting_server()
    server.hold(4)
    providers = Providers(default_base_url=f"http://127.0.0.1:{server.port}/v1", timeout_s=10)
    async with HttpPool(max_connections=4) as pool:
        context = ExecutionContext(llm_providers=providers, http_pool=pool)
        task = make_task("llm", llm_data([{"role": "user", "text": "ping"}]))
        for _ in range(2):  # two waves of 12: the second reuses the first's connections
            await asyncio.gather(*(run_llm_node(task, context) for _ in range(12)))
    assert len(server.requests) == 24
    assert server.connections == 4
    assert server.peak_in_flight == 4


LLM_FANOUT = """
app: {name: pool-fanout, mode: workflow}
kind: app
version: 0.3.1
workflow:
  graph:
    nodes:
    - {id: start, data: {type: start, title: Start, variables: []}}
    - id: make
      data:
        type: code
        title: Make
        code_language: python3
        code: |
          def main() -> dict:
              return {"items": list(range(40))}
        variables: []
        outputs: {items: {type: 'array[number]'}}
    - id: each
      data:
        type: iteration
        title: Each
        iterator_selector: [make, items]
        output_selector: [ask, text]
        is_parallel: true
        parallel_nums: 5
        error_handle_mode: terminated
        start_node_id: eachstart
    - {id: eachstart, parentId: each, data: {type: iteration-start, title: '', iteration_id: each}}
    - id: ask
      parentId: each
      data:
        type: llm
        title: Ask
        iteration_id: each
        model: {provider: openai, name: m, mode: chat, completion_params: {}}
        context: {enabled: false}
        prompt_template: [{role: user, text: 'item {{#each.item#}}'}]
    - id: end
      data: {type: end, title: End, outputs: [{variable: answers, value_selector: [each, output]}]}
    edges:
    - {id: e1, source: start, target: make, sourceHandle: source}
    - {id: e2, source: make, target: each, sourceHandle: source}
    - {id: e3, source: eachstart, target: ask, sourceHandle: source}
    - {id: e4, source: each, target: end, sourceHandle: source}
"""


async def test_the_embedded_runner_pools_connections_for_its_run(
    counting_server: ServerFactory, tmp_path: Path
) -> None:
    server = await counting_server()
    server.delay_s = 0.01
    workflow_file = tmp_path / "fanout.yml"
    workflow_file.write_text(LLM_FANOUT)
    providers = Providers(default_base_url=f"http://127.0.0.1:{server.port}/v1", timeout_s=10)
    runner = EmbeddedRunner(context=ExecutionContext(llm_providers=providers))
    result = await runner.async_run(load_workflow(workflow_file), RunRequest(inputs={}))
    assert result.status == "succeeded", result.error
    assert result.outputs["answers"] == ["pong"] * 40
    assert len(server.requests) == 40
    assert server.connections <= 5  # parallel_nums: at most 5 calls at once, each reused


# ---- the http-request node ----


async def test_sequential_http_requests_share_one_connection(
    counting_server: ServerFactory,
) -> None:
    server = await counting_server()
    async with HttpPool() as pool:
        for _ in range(10):
            result = await execute_task(
                http_task(f"http://127.0.0.1:{server.port}/echo"), guarded_context(pool)
            )
            assert result.status == "succeeded", result.error
    assert len(server.requests) == 10
    assert server.connections == 1


async def test_a_pooled_connection_is_used_only_for_the_address_just_checked(
    monkeypatch: pytest.MonkeyPatch, counting_server: ServerFactory
) -> None:
    first = await counting_server("127.0.0.1")
    try:
        second = await counting_server("127.0.0.2", first.port)
    except OSError as exc:
        pytest.fail(f"this test needs 127.0.0.2 on loopback (Linux has it): {exc}")
    url = f"http://api.test:{first.port}/echo"
    async with HttpPool() as pool:
        context = guarded_context(pool, allow=("127.0.0.0/8",))
        resolve_as(monkeypatch, {"api.test": ["127.0.0.1"]})
        for _ in range(2):
            assert (await execute_task(http_task(url), context)).status == "succeeded"
        # the name now resolves elsewhere (DNS rebinding): no reuse of the kept-alive
        # connection, the request goes to the new checked address
        resolve_as(monkeypatch, {"api.test": ["127.0.0.2"]})
        assert (await execute_task(http_task(url), context)).status == "succeeded"
        # ... and a private answer is refused although a connection to api.test is open
        resolve_as(monkeypatch, {"api.test": ["10.0.0.1"]})
        refused = await execute_task(http_task(url), context)
        assert (refused.reason, refused.error_type) == ("ssrf", "SSRFError")
        assert "api.test resolves to 10.0.0.1" in (refused.error or "")
    assert (len(first.requests), first.connections) == (2, 1)
    assert (len(second.requests), second.connections) == (1, 1)
    assert first.requests[0][1]["host"] == f"api.test:{first.port}"


async def test_pooled_clients_keep_no_cookies(counting_server: ServerFactory) -> None:
    server = await counting_server()
    base = f"http://127.0.0.1:{server.port}"
    async with HttpPool() as pool:
        context = guarded_context(pool)
        assert (await execute_task(http_task(f"{base}/set-cookie"), context)).status == "succeeded"
        echoed = await execute_task(http_task(f"{base}/echo"), context)
    assert "cookie" not in json.loads(echoed.outputs["body"])["headers"]
    assert server.connections == 1


async def test_a_guarded_transport_keeps_at_most_max_hosts_pools(
    monkeypatch: pytest.MonkeyPatch, counting_server: ServerFactory
) -> None:
    server = await counting_server()
    names = {f"h{i}.test": ["127.0.0.1"] for i in range(4)}
    resolve_as(monkeypatch, names)
    transport = ssrf.GuardedTransport(
        ssrf.AddressGuard(allow_list=("127.0.0.1",)),
        ssl_context=ssl.create_default_context(),
        max_hosts=2,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for name in [*names, "h0.test"]:
            response = await client.get(f"http://{name}:{server.port}/echo")
            assert response.status_code == 200
        assert list(transport._transports) == ["h3.test", "h0.test"]
    # h0 was evicted (its connection closed) and came back: 5 connections for 5 requests
    assert server.connections == 5


async def test_a_sharded_transport_fills_its_pools_in_order(
    counting_server: ServerFactory,
) -> None:
    server = await counting_server()
    url = f"http://127.0.0.1:{server.port}/echo"
    transport = ShardedTransport(limits=httpx.Limits(max_connections=40))
    assert len(transport._shards) == 10  # 4 connections each
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            assert (await client.get(url)).status_code == 200
        assert server.connections == 1  # sequential: the first pool's one connection
        server.hold(40)
        for _ in range(2):
            responses = await asyncio.gather(*(client.get(url) for _ in range(40)))
            assert all(r.status_code == 200 for r in responses)
    assert server.peak_in_flight == 40
    assert server.connections == 40  # the second wave reused the first wave's
