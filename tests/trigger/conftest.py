"""Trigger fixtures: a real uvicorn server on a free port, over real RabbitMQ and a SQLite file.

Every test gets its own namespace (queues, exchanges) and database; both are removed after
it. `mesh` adds real worker and aggregator processes (`python -m fanflow_services.cli worker|...`)
on the same namespace and database, so runs go all the way through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fanflow_services.trigger.app import create_app
from fastapi import FastAPI

from fanflow.mesh.amqp import AmqpBroker
from fanflow.mesh.topology import Topology
from fanflow.settings import Settings
from tests.conftest import AMQP_URL, ROOT, require_service
from tests.mesh.cluster import Cluster

HELLO = ROOT / "examples" / "hello.yml"
FANOUT = ROOT / "examples" / "fanout.yml"
ADMIN_TOKEN = "test-admin-token"
HELLO_OUTPUTS = {"greeting": "Hello, world!", "shout": "HELLO, WORLD!", "length": 13}


@dataclass
class Server:
    """A running trigger: its base URL, settings and an HTTP client bound to it."""

    url: str
    settings: Settings
    http: httpx.AsyncClient
    app: FastAPI

    async def import_app(self, path: Path = HELLO) -> str:
        """Register a workflow through the admin API; its API key."""
        response = await self.http.post(
            "/admin/apps",
            content=path.read_bytes(),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "text/yaml"},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["api_key"])


StartServer = Callable[..., Awaitable[Server]]


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    require_service(AMQP_URL, "RabbitMQ")
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'trigger.db'}",
        "amqp_url": AMQP_URL,
        "namespace": f"fanflow-trigger-{uuid.uuid4().hex[:10]}",
        "admin_token": ADMIN_TOKEN,
        "blocking_timeout_s": 45.0,
    }
    values.update(overrides)
    return Settings(**values)


async def delete_topology(settings: Settings) -> None:
    broker = AmqpBroker(settings.amqp_url, topology=Topology(namespace=settings.namespace))
    await broker.connect()
    try:
        await broker.delete_topology()
    finally:
        await broker.close()


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Factory: `await start_server(cluster=None, max_request_bytes=None, **settings)` → a
    running trigger, on the cluster's namespace and database when one is given, else on
    fresh ones. Servers stop after the test, and the fresh namespaces are deleted."""
    async with contextlib.AsyncExitStack() as stack:
        owned: list[Settings] = []

        async def start(
            *,
            cluster: Cluster | None = None,
            max_request_bytes: int | None = None,
            **overrides: Any,
        ) -> Server:
            if cluster is not None:
                overrides = {
                    "database_url": cluster.database_url,
                    "namespace": cluster.namespace,
                    **overrides,
                }
            settings = settings_for(tmp_path, **overrides)
            if cluster is None:
                owned.append(settings)
            options = {} if max_request_bytes is None else {"max_request_bytes": max_request_bytes}
            app = create_app(settings, **options)
            config = uvicorn.Config(
                app, host="127.0.0.1", port=0, lifespan="on", log_level="warning"
            )
            server = uvicorn.Server(config)
            task = asyncio.create_task(server.serve())
            while not server.started:
                if task.done():
                    task.result()
                    raise AssertionError("the trigger exited while starting")
                await asyncio.sleep(0.01)

            async def stop() -> None:
                server.should_exit = True
                await asyncio.wait_for(task, 15)

            stack.push_async_callback(stop)
            port = server.servers[0].sockets[0].getsockname()[1]
            url = f"http://127.0.0.1:{port}"
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=60))
            return Server(url, settings, http, app)

        try:
            yield start
        finally:
            await stack.aclose()
            for settings in owned:
                await delete_topology(settings)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Cluster]:
    """One worker and one aggregator process on a fresh namespace and SQLite database."""
    require_service(AMQP_URL, "RabbitMQ")
    cluster = await Cluster.open(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'mesh.db'}",
        amqp_url=AMQP_URL,
        log_dir=tmp_path / "logs",
        namespace=f"fanflow-trigger-{uuid.uuid4().hex[:10]}",
    )
    try:
        cluster.start_worker()
        cluster.start_aggregator()
        await cluster.wait_ready()
        yield cluster
    finally:
        await cluster.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def read_sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The `data:` payloads of an SSE response; `{"event": "ping"}` for `event: ping`."""
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield json.loads(line[len("data: ") :])
        elif line == "event: ping":
            yield {"event": "ping"}
