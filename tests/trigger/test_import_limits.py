"""Hostile workflow imports against a real trigger: alias bombs, recursive anchors, deep YAML,
oversized files and graphs are refused in milliseconds with a 400 (413 for the size) naming
the problem, and `/healthz` keeps answering while an import is parsed (off the event loop).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from tests.conftest import AMQP_URL, require_service
from tests.trigger.conftest import ADMIN_TOKEN, HELLO, StartServer, delete_topology, settings_for

YAML = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "text/yaml"}


def alias_bomb(levels: int = 8, width: int = 10) -> str:
    """The billion laughs: `width ** levels` values from about 1.5 KB."""
    lines = ["kind: app", "app: {name: bomb, mode: workflow}", 'l0: &l0 ["lol"]']
    for level in range(1, levels + 1):
        refs = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"l{level}: &l{level} [{refs}]")
    lines.append(f"workflow: {{graph: {{nodes: *l{levels}, edges: []}}}}")
    return "\n".join(lines) + "\n"


def graph_of(nodes: int, edges: int) -> str:
    lines = ["kind: app", "version: 0.1.5", "app: {name: big, mode: workflow}", "workflow:"]
    lines += ["  graph:", "    nodes:"]
    lines += [f"      - {{id: n{i}, data: {{type: start, title: S}}}}" for i in range(nodes)]
    lines.append("    edges:" if edges else "    edges: []")
    lines += [f"      - {{source: n{i}, target: n{i + 1}}}" for i in range(edges)]
    return "\n".join(lines) + "\n"


async def refused(http: httpx.AsyncClient, document: str, *fragments: str) -> float:
    started = time.perf_counter()
    response = await http.post("/admin/apps", content=document.encode(), headers=YAML)
    elapsed = time.perf_counter() - started
    assert response.status_code == 400, response.text[:500]
    message = response.json()["message"]
    for fragment in fragments:
        assert fragment in message, message
    return elapsed


async def test_alias_bombs_recursive_anchors_and_deep_yaml_are_refused_fast(
    start_server: StartServer,
) -> None:
    server = await start_server()
    bomb = alias_bomb()
    assert len(bomb) < 1600
    assert await refused(server.http, bomb, "alias bomb") < 0.5
    assert await refused(server.http, alias_bomb(levels=30, width=2), "alias bomb") < 0.5
    recursive = "kind: app\napp: &a {name: r, mode: workflow, self: *a}\n"
    assert await refused(server.http, recursive, "alias *a refers to itself") < 0.5
    nested = "kind: app\napp: {name: d, mode: workflow}\nx: " + "[" * 100_000 + "]" * 100_000
    assert await refused(server.http, nested, "nested deeper than") < 1.0
    surrogate = 'kind: app\napp: {name: "\\ud800", mode: workflow}\n'
    assert await refused(server.http, surrogate, "lone surrogate") < 0.5
    # the trigger is fine afterwards: a real workflow still imports
    assert await server.import_app(HELLO)


async def test_graph_and_file_size_limits_are_refused_before_building(
    start_server: StartServer,
) -> None:
    server = await start_server(dsl_max_nodes=50, dsl_max_edges=60, dsl_max_bytes=200_000)
    nodes = await refused(server.http, graph_of(51, 0), "graph.nodes: 51 nodes", "limit of 50")
    edges = await refused(server.http, graph_of(2, 61), "graph.edges: 61 edges", "limit of 60")
    assert nodes < 0.5 and edges < 0.5
    response = await server.http.post(
        "/admin/apps", content=b"#" * 200_001 + b"\nkind: app\n", headers=YAML
    )
    assert response.status_code == 413, response.text
    assert "200000 bytes" in response.json()["message"]
    # within the limits the same shape is only refused for what is wrong with it
    response = await server.http.post("/admin/apps", content=graph_of(3, 2).encode(), headers=YAML)
    assert response.status_code == 400
    assert "limit" not in response.json()["message"]


def assert_fast(timings: list[float]) -> None:
    """Every /healthz under 100 ms; on this shared 2-CPU machine one in twenty may be
    descheduled longer (still under 300 ms) — an event loop blocked by parsing took seconds."""
    timings = sorted(timings)
    shown = [round(t * 1000) for t in timings]
    assert timings[int(len(timings) * 0.95)] < 0.1, f"/healthz ms: {shown}"
    assert timings[-1] < 0.3, f"/healthz ms: {shown}"


async def healthz_while(http: httpx.AsyncClient, busy: asyncio.Task[object]) -> list[float]:
    timings = []
    while not busy.done():
        started = time.perf_counter()
        response = await http.get("/healthz")
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        await asyncio.sleep(0.02)
    return timings


async def test_healthz_answers_during_alias_bomb_imports(start_server: StartServer) -> None:
    server = await start_server()

    async def bombard() -> None:
        deadline = time.perf_counter() + 2.0
        while time.perf_counter() < deadline:
            await asyncio.gather(
                *(refused(server.http, alias_bomb(), "alias bomb") for _ in range(4))
            )

    busy = asyncio.create_task(bombard())
    timings = await healthz_while(server.http, busy)
    await busy
    assert len(timings) >= 10
    assert_fast(timings)


async def test_healthz_answers_while_a_large_import_is_parsed(start_server: StartServer) -> None:
    server = await start_server()
    # a file within every limit that takes seconds to parse: the parse runs in a thread
    padding = "padding: [" + ", ".join(["1"] * 150_000) + "]\n"
    document = HELLO.read_text() + padding

    async def import_large() -> float:
        started = time.perf_counter()
        response = await server.http.post("/admin/apps", content=document.encode(), headers=YAML)
        assert response.status_code == 201, response.text[:300]
        return time.perf_counter() - started

    busy = asyncio.create_task(import_large())
    timings = await healthz_while(server.http, busy)
    took = await busy
    assert took > 0.5, f"the import took only {took:.2f} s: not a test of the event loop"
    assert len(timings) >= 5
    assert_fast(timings)


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_import_helper_leaves_with_a_killed_trigger(tmp_path: Path) -> None:
    require_service(AMQP_URL, "RabbitMQ")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    namespace = f"fanflow-imp-{uuid.uuid4().hex[:10]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FANFLOW_")},
        "FANFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'k.db'}",
        "FANFLOW_AMQP_URL": AMQP_URL,
        "FANFLOW_NAMESPACE": namespace,
        "FANFLOW_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    trigger = subprocess.Popen(
        [sys.executable, "-m", "fanflow_services.cli", "trigger", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert trigger.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        imported = httpx.post(f"{url}/admin/apps", content=HELLO.read_bytes(), headers=YAML)
        assert imported.status_code == 201, imported.text
        helpers = _children(trigger.pid)
        helpers |= {grandchild for child in helpers for grandchild in _children(child)}
        assert len(helpers) >= 2, helpers  # the forkserver and its helper, at least
    finally:
        trigger.kill()
        trigger.wait()
        asyncio.run(delete_topology(settings_for(tmp_path, namespace=namespace)))
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in helpers if _alive(pid)], "helpers outlived the killed trigger"
