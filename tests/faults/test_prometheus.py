"""A real Prometheus (Debian's `prometheus`) scrapes a live `fanflow dev` on the private
broker and database while a workload with faults runs: LLM errors and 429s, an SSRF
refusal, a code node retried by the scheduler, a poison task, an unroutable outbox row, a database
blip. Afterwards every query of every Grafana dashboard in deploy/ must return data, and
every alert rule of deploy/prometheus/alerts.yml must load and evaluate without error.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fanflow.mesh.amqp import AmqpBroker
from fanflow.mesh.driver import RunDriver
from fanflow.mesh.topology import DEFAULT_NODE_CLASSES, Topology
from fanflow.runtime import RunRequest
from fanflow.scheduler import Limits
from fanflow.store import Store
from tests.conftest import ROOT
from tests.deploy.test_dev import DevProcess
from tests.e2e.conftest import Mocks
from tests.faults.matrix import ITEMS, WORKLOAD
from tests.faults.ports import accepts, free_port
from tests.faults.postgres import PrivatePostgres
from tests.faults.rabbit import PrivateRabbit

pytestmark = pytest.mark.timeout(300)

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SSRF_PROBE = Path(__file__).with_name("ssrf_probe.yml")
ALWAYS_FAILS = Path(__file__).with_name("always_fails.yml")
ADMIN_TOKEN = "faults-admin"
#: Grafana's interval variables, as a Prometheus query sees them
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
WORKERS = 2
#: series of features this workload does not use yet (fleet-wide Redis limits, LLM
#: fallback models, the LLM cache, a prices file): their queries must evaluate, but may
#: return nothing. Every other query must return data.
NOT_EXERCISED = frozenset(
    {
        "fanflow_flow_control_deferred_total",
        "fanflow_llm_failovers_total",
        "fanflow_llm_cache_requests_total",
        "fanflow_llm_cost_total",
    }
)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} not found: install the Debian package `prometheus` (.ci/run does)",
            pytrace=False,
        )
    return found


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expression) of every Prometheus target."""
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        panels = list(dashboard["panels"])
        for panel in dashboard["panels"]:
            panels += panel.get("panels", [])
        for panel in panels:
            for target in panel.get("targets", []):
                if "expr" in target:
                    expr = target["expr"]
                    for variable, value in GRAFANA_VARIABLES.items():
                        expr = expr.replace(variable, value)
                    queries.append((path.name, panel["title"], expr))
    return queries


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (a worker's is the aggregator's + i)."""
    for _ in range(200):
        base = free_port()
        if base + count < 65535 and not any(accepts(base + i) for i in range(count)):
            return base
    raise AssertionError(f"no {count} consecutive free ports")


class Prometheus:
    def __init__(self, directory: Path, targets: dict[str, list[int]]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}],
                }
                for job, ports in {**targets, "prometheus": [self.port]}.items()
            ],
        }
        path = directory / "prometheus.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log = directory / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    _tool("prometheus"),
                    f"--config.file={path}",
                    f"--storage.tsdb.path={directory / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}/api/v1", timeout=10)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, self.log.read_text(errors="replace")
            assert time.monotonic() < deadline, "prometheus not ready in 30 s"
            time.sleep(0.2)

    def until_scraped(self, targets: int, *, timeout_s: float = 30) -> None:
        """Until `targets` targets were scraped up twice (discovery waits ~5 s to start)."""
        deadline = time.monotonic() + timeout_s
        while True:
            up = self.query("count(count_over_time(up[1m]) >= 2 and up == 1)")
            if up and int(float(up[0]["value"][1])) >= targets:
                return
            assert time.monotonic() < deadline, f"targets not scraped: {self.query('up')}"
            time.sleep(0.5)

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.api.get("/query", params={"query": expr}).json()
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def close(self) -> None:
        self.api.close()
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def dev(
    tmp_path: Path, broker: PrivateRabbit, postgres: PrivatePostgres
) -> Iterator[tuple[DevProcess, dict[str, str], int]]:
    """`fanflow dev` (trigger, aggregator, 2 workers) on the private services, the mock LLM
    answering 503 to 20 % and 429 to 10 % of the calls; (process, env, metrics base port)."""
    database = asyncio.run(postgres.create_database())
    mocks = Mocks(tmp_path)
    mock = mocks.start(
        "--mode", "echo", "--error-rate", "0.2", "--rate-limit-rate", "0.1",
        "--retry-after-s", "0.1", "--seed", "11",
    )  # fmt: skip
    metrics = consecutive_free_ports(WORKERS + 1)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("FANFLOW_")}
    env |= {
        "FANFLOW_AMQP_URL": broker.url,
        "FANFLOW_DATABASE_URL": database,
        "FANFLOW_NAMESPACE": f"faults-prom-{uuid.uuid4().hex[:8]}",
        "FANFLOW_ADMIN_TOKEN": ADMIN_TOKEN,
        "FANFLOW_LLM_BASE_URL": mock.url,
        "FANFLOW_METRICS_PORT": str(metrics),
        "FANFLOW_WORKER_PREFETCH": "8",
        "FANFLOW_DRAIN_TIMEOUT_S": "5",
    }
    process = DevProcess(env, port=free_port(), workers=WORKERS)
    try:
        process.wait_for(lambda line: line.startswith("[dev] ready:"), 90)
        yield process, env, metrics
    finally:
        process.kill()
        mocks.stop(mock)


async def import_app(http: httpx.AsyncClient, path: Path) -> tuple[str, str]:
    response = await http.post(
        "/admin/apps",
        content=path.read_bytes(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "text/yaml"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return str(body["app_id"]), str(body["api_key"])


async def run(http: httpx.AsyncClient, key: str, inputs: dict[str, Any]) -> dict[str, Any]:
    response = await http.post(
        "/v1/workflows/run",
        json={"inputs": inputs, "response_mode": "blocking", "user": "prom"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def drive_workload(dev_port: int, env: dict[str, str], postgres: PrivatePostgres) -> None:
    namespace = env["FANFLOW_NAMESPACE"]
    topology = Topology(namespace=namespace)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dev_port}") as http:
        app_id, workload_key = await import_app(http, WORKLOAD)
        _, probe_key = await import_app(http, SSRF_PROBE)
        _, fails_key = await import_app(http, ALWAYS_FAILS)
        runs = [asyncio.create_task(run(http, workload_key, {"n": ITEMS})) for _ in range(2)]
        runs += [asyncio.create_task(run(http, k, {})) for k in (probe_key, fails_key)]
        # a poison task, and a database blip while the runs are under way
        async with AmqpBroker(env["FANFLOW_AMQP_URL"], topology=topology) as broker:
            await broker.publish_raw(topology.tasks_exchange, "code", b"poison", message_id="p1")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(postgres.stop, "immediate")
        await asyncio.sleep(3)
        await asyncio.to_thread(postgres.start)
        answers = await asyncio.gather(*runs)
        assert {a["data"]["status"] for a in answers[:2]} <= {"succeeded", "failed"}
        assert [a["data"]["status"] for a in answers[2:]] == ["failed", "failed"]
        # a committed task for a class no queue serves: the aggregator's sweep parks it
        store = await Store.open(env["FANFLOW_DATABASE_URL"])
        try:
            app = await store.get_app(app_id)
            assert app is not None
            gpu = Topology(
                namespace=namespace, node_classes={**DEFAULT_NODE_CLASSES, "code": "gpu"}
            )
            victim = str(uuid.uuid4())
            await RunDriver(store, gpu, limits=Limits()).start_run(
                app, victim, RunRequest(inputs={"n": 2})
            )
            deadline = time.monotonic() + 40  # the periodic sweep leaves rows 10 s old
            while (record := await store.get_run(victim)) is None or record.status == "running":
                assert time.monotonic() < deadline, "the unroutable row was not parked"
                await asyncio.sleep(0.5)
            assert record.status == "failed"
        finally:
            await store.close()


async def test_every_dashboard_query_and_alert_rule_against_a_live_mesh(
    tmp_path: Path, dev: tuple[DevProcess, dict[str, str], int], postgres: PrivatePostgres
) -> None:
    process, env, metrics = dev
    check = subprocess.run(
        [_tool("promtool"), "check", "rules", str(ALERTS)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    prometheus = Prometheus(
        tmp_path,
        {
            "trigger": [process.port],
            "aggregator": [metrics],
            "worker": [metrics + i for i in range(1, WORKERS + 1)],
        },
    )
    try:
        # every target scraped at 0 first: an increase needs a sample before the change
        await asyncio.to_thread(prometheus.until_scraped, 2 + WORKERS + 1)
        await drive_workload(process.port, env, postgres)
        await asyncio.sleep(4)  # a few scrapes after the last change
        queries = dashboard_queries()
        assert len(queries) >= 20
        empty = [
            (board, title, expr)
            for board, title, expr in queries
            if not await asyncio.to_thread(prometheus.query, expr)
        ]
        missing = [q for q in empty if not any(name in q[2] for name in NOT_EXERCISED)]
        assert not missing, "dashboard queries without data:\n" + "\n".join(map(str, missing))
        published = prometheus.query("sum(fanflow_outbox_published_total)")
        assert float(published[0]["value"][1]) > 0
        for name in ("fanflow_aggregator_transient_errors_total", "fanflow_outbox_parked_total"):
            assert float(prometheus.query(f"sum({name})")[0]["value"][1]) > 0, name
        up = prometheus.query('count(up{job="worker"} == 1)')
        assert up and float(up[0]["value"][1]) == WORKERS
        # every alert rule loaded and evaluated without error
        groups = prometheus.api.get("/rules").json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        expected = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
        names = {r["alert"] for g in expected["groups"] for r in g["rules"]}
        assert {rule["name"] for rule in rules} == names
        bad = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
        assert not bad, bad
        firing = {a["metric"]["alertname"] for a in prometheus.query("ALERTS")}
        assert {"FanflowDeadLetters", "FanflowOutboxRowsParked"} <= firing, firing
    finally:
        prometheus.close()
