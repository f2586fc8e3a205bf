"""docker-compose.yml, the Dockerfiles, Prometheus and Grafana config, checked statically.

There is no Docker engine in CI: what can go wrong without running a container is checked
here — commands that `fanflow` does not have, settings that do not exist, files a build or
a mount needs, scrape targets on the wrong port, dashboard queries on unknown metrics.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import fanflow.metrics
from fanflow.llm.mock_server import MockOptions
from fanflow.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "fanflow.json"
RABBITMQ = ROOT / "deploy" / "rabbitmq"
FANFLOW_SERVICES = ("trigger", "aggregator", "worker")
#: services of `docker compose --profile demo up`, that run `fanflow` too
DEMO_SERVICES = ("mock-llm",)
COMMON_ENV = {
    "FANFLOW_DATABASE_URL": "postgresql+asyncpg://fanflow:fanflow@postgres:5432/fanflow",
    "FANFLOW_ADMIN_TOKEN": "${FANFLOW_ADMIN_TOKEN:-change-me}",
}
#: series Prometheus itself adds to every target
PROMETHEUS_SERIES = {"up"}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def _services() -> dict[str, Any]:
    services: dict[str, Any] = _compose()["services"]
    return services


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _option(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{argv}: no {name}")


def _default(value: str) -> str:
    """`${VAR:-default}` → `default` (what compose uses when VAR is unset)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _required(value: str) -> str:
    """`${VAR:?message}` → a stand-in value (compose refuses to start while VAR is unset)."""
    return re.sub(r"\$\{(\w+):\?[^}]*\}", r"stand-in-\1-value", value)


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _fanflow(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb")
    return subprocess.run(
        [sys.executable, "-m", "fanflow_services.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_the_mesh_is_all_there() -> None:
    services = _services()
    expected = {"rabbitmq", "postgres", *FANFLOW_SERVICES, "prometheus", "grafana"}
    assert expected <= set(services), f"missing: {sorted(expected - set(services))}"
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.13-management")
    assert services["postgres"]["image"].startswith("postgres:16")


@pytest.mark.parametrize("name", FANFLOW_SERVICES + DEMO_SERVICES)
def test_command_is_a_fanflow_subcommand(name: str) -> None:
    argv = _argv(_services()[name])
    assert argv[0] == "fanflow", f"{name}: command {argv} does not run fanflow"
    done = _fanflow(argv[1], "--help")
    assert done.returncode == 0, f"{name}: `fanflow {argv[1]} --help` failed:\n{done.stderr}"
    for option in (a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")):
        assert option in done.stdout, f"{name}: `fanflow {argv[1]}` has no option {option}"


@pytest.mark.parametrize("name", FANFLOW_SERVICES)
def test_service_shape(name: str) -> None:
    service = _services()[name]
    env = _env(service)
    for key, value in COMMON_ENV.items():
        assert env.get(key) == value, f"{name}: environment {key} should be {value!r}"
    assert service.get("restart") == "unless-stopped", f"{name}: restart: unless-stopped"
    assert "stop_grace_period" in service, f"{name}: no stop_grace_period"
    grace_s = _seconds(str(service["stop_grace_period"]))
    if "FANFLOW_DRAIN_TIMEOUT_S" in env or name == "worker":
        drain_s = float(env.get("FANFLOW_DRAIN_TIMEOUT_S", Settings().drain_timeout_s))
        assert grace_s > drain_s, (
            f"{name}: stop_grace_period {grace_s:g}s must exceed the drain timeout "
            f"{drain_s:g}s, or Docker kills it mid-drain"
        )
    depends = service.get("depends_on")
    assert isinstance(depends, dict) and "rabbitmq" in depends, f"{name}: depends_on rabbitmq"
    wanted = {"rabbitmq"} if name == "worker" else {"rabbitmq", "postgres"}
    for dependency in wanted:
        condition = (depends.get(dependency) or {}).get("condition")
        assert condition == "service_healthy", (
            f"{name}: depends_on {dependency} needs condition: service_healthy"
        )


def test_every_fanflow_variable_is_a_setting() -> None:
    fields = {f"FANFLOW_{name.upper()}" for name in Settings.model_fields}
    used: dict[str, str] = {}
    for name, service in _services().items():
        for key in _env(service):
            if key.startswith("FANFLOW_"):
                used[key] = f"docker-compose.yml service {name}"
    for key in re.findall(r"\$\{(FANFLOW_\w+)", COMPOSE.read_text(encoding="utf-8")):
        used.setdefault(key, "docker-compose.yml interpolation")
    for dockerfile in _dockerfiles().values():
        if not dockerfile.exists():
            continue  # test_dockerfile says so
        for key in re.findall(r"\b(FANFLOW_\w+)=", dockerfile.read_text(encoding="utf-8")):
            used.setdefault(key, str(dockerfile.relative_to(ROOT)))
    unknown = {key: where for key, where in used.items() if key not in fields}
    assert not unknown, f"not fields of fanflow.settings.Settings: {unknown}"


@pytest.mark.parametrize("name", FANFLOW_SERVICES)
def test_environment_values_parse_as_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FANFLOW_"):
            monkeypatch.delenv(key)
    for key, value in _env(_services()[name]).items():
        monkeypatch.setenv(key, _default(value))
    Settings()  # raises on a value of the wrong type


def test_demo_profile_runs_the_mock_llm() -> None:
    services = _services()
    for name in FANFLOW_SERVICES:
        assert "profiles" not in services[name], f"{name} must run without a profile"
    mock = services["mock-llm"]
    assert mock.get("profiles") == ["demo"], "mock-llm belongs to the `demo` profile only"
    assert mock.get("build", {}).get("dockerfile") == "services/worker/Dockerfile", (
        "mock-llm runs the worker's image"
    )
    argv = _argv(mock)
    assert argv[:2] == ["fanflow", "mock-llm"], argv
    assert _option(argv, "--host") == "0.0.0.0", "mock-llm must listen beyond its container"
    port = int(_option(argv, "--port"))
    # every option that is a MockOptions field must give valid options (rates, mode...)
    defaults = {f: getattr(MockOptions(), f) for f in MockOptions.__dataclass_fields__}
    given: dict[str, Any] = {}
    for i, arg in enumerate(argv):
        field = arg.removeprefix("--").split("=", 1)[0].replace("-", "_")
        if arg.startswith("--") and field in defaults and defaults[field] is not None:
            value = arg.split("=", 1)[1] if "=" in arg else argv[i + 1]
            given[field] = type(defaults[field])(value)
    try:
        MockOptions(**given)
    except ValueError as exc:
        pytest.fail(f"mock-llm: invalid options {given}: {exc}", pytrace=False)
    health = " ".join(mock.get("healthcheck", {}).get("test", []))
    assert f":{port}/health" in health, f"mock-llm healthcheck should probe :{port}/health"
    worker_env = _env(services["worker"])
    base_url = worker_env.get("FANFLOW_LLM_BASE_URL", "")
    assert base_url.startswith("${FANFLOW_LLM_BASE_URL:-"), "let the environment override it"
    assert _default(base_url) == f"http://mock-llm:{port}/v1", base_url
    assert _default(worker_env.get("FANFLOW_LLM_API_KEY", "x")) == "", (
        "the demo needs no API key: FANFLOW_LLM_API_KEY defaults to empty"
    )
    for name, service in services.items():
        if "demo" not in service.get("profiles", []):
            assert "mock-llm" not in (service.get("depends_on") or {}), (
                f"{name} depends on mock-llm, which only the `demo` profile starts"
            )


def test_worker_is_scalable() -> None:
    worker = _services()["worker"]
    assert "container_name" not in worker, "a container_name stops `--scale worker=N`"
    assert "ports" not in worker, "fixed host ports stop `--scale worker=N`; use expose"


@pytest.mark.parametrize(
    ("name", "probe"),
    [
        ("rabbitmq", "rabbitmq-diagnostics"),
        ("postgres", "pg_isready"),
        ("trigger", "/healthz"),
        ("worker", "fanflow health /tmp/fanflow-health.json"),
        ("aggregator", "fanflow health /tmp/fanflow-health.json"),
    ],
)
def test_healthchecks(name: str, probe: str) -> None:
    test = _services()[name].get("healthcheck", {}).get("test")
    assert test, f"{name}: no healthcheck"
    assert probe in " ".join(test if isinstance(test, list) else [test]), test
    if name in ("worker", "aggregator"):
        env = _services()[name]["environment"]
        assert env["FANFLOW_HEALTH_FILE"] == "/tmp/fanflow-health.json", env
    if name == "trigger":
        assert "curl" not in str(test) and "wget" not in str(test), "slim images lack curl/wget"


def _dockerfiles() -> dict[str, Path]:
    found = {}
    for name, service in _services().items():
        build = service.get("build")
        if isinstance(build, dict):
            context = ROOT / build.get("context", ".")
            found[name] = context / build.get("dockerfile", "Dockerfile")
    return found


def _dockerignore() -> list[str]:
    path = ROOT / ".dockerignore"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    rows = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


@pytest.mark.parametrize("name", FANFLOW_SERVICES)
def test_dockerfile(name: str) -> None:
    dockerfile = _dockerfiles().get(name)
    assert dockerfile is not None, f"{name}: no build.dockerfile"
    assert dockerfile.exists(), f"{name}: {dockerfile.relative_to(ROOT)} does not exist"
    context = ROOT / _services()[name]["build"].get("context", ".")
    ignored = _dockerignore()
    instructions = _instructions(dockerfile)
    for keyword, rest in instructions:
        if keyword not in ("COPY", "ADD"):
            continue
        args = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        sources = [a for a in args if not a.startswith("--")][:-1]
        if any(a.startswith("--from") for a in args):
            continue  # from another stage
        for source in sources:
            assert (context / source).exists(), f"{dockerfile.name}: COPY {source}: no such file"
            path = source.removeprefix("./").rstrip("/")
            hits = [p for p in ignored if fnmatch.fnmatch(path, p.removeprefix("/").rstrip("/"))]
            assert not hits, f"{dockerfile.name}: COPY {source} is excluded by .dockerignore"
    keywords = {k for k, _ in instructions}
    users = [rest for k, rest in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{dockerfile.name}: run as a non-root USER"
    assert "CMD" in keywords or "ENTRYPOINT" in keywords, f"{dockerfile.name}: no CMD"
    cmd = next(rest for k, rest in reversed(instructions) if k in ("CMD", "ENTRYPOINT"))
    argv = json.loads(cmd) if cmd.startswith("[") else shlex.split(cmd)
    if argv[0] == "fanflow" and len(argv) > 1:
        assert _fanflow(argv[1], "--help").returncode == 0, f"{dockerfile.name}: CMD {argv}"


def test_bind_mounts_exist() -> None:
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: mount source {source} is missing"


# ---- Prometheus ----------------------------------------------------------------------


def _scrape_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    services = _services()
    jobs = _scrape_jobs()
    trigger_command = [str(a) for a in services["trigger"]["command"]]
    trigger_port = trigger_command[trigger_command.index("--port") + 1]
    targets = [t for c in jobs["trigger"].get("static_configs", []) for t in c["targets"]]
    assert targets == [f"trigger:{trigger_port}"], targets
    for name in ("aggregator", "worker"):
        metrics_port = int(_env(services[name])["FANFLOW_METRICS_PORT"])
        discovered = jobs[name].get("dns_sd_configs", [])
        static = [t for c in jobs[name].get("static_configs", []) for t in c["targets"]]
        assert any(
            c["names"] == [name] and c.get("port") == metrics_port for c in discovered
        ) or static == [f"{name}:{metrics_port}"], (
            f"job {name}: expected {name}:{metrics_port}, got {jobs[name]}"
        )
    # a scaled worker must be found by DNS, not by a fixed target
    assert any(c.get("type") == "A" for c in jobs["worker"]["dns_sd_configs"])
    mounts = services["prometheus"]["volumes"]
    assert any(str(m).startswith("./deploy/prometheus/prometheus.yml:") for m in mounts), mounts


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found: install the Debian package `prometheus` "
            "(apt-get install -y --no-install-recommends prometheus); .ci/run installs it",
            pytrace=False,
        )
    done = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---- Grafana -------------------------------------------------------------------------

#: PromQL words that are not metric names
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_PROMQL_WORDS |= {"and", "or", "unless", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function call or an aggregation
        if match.group().lower() not in _PROMQL_WORDS:
            names.add(match.group())
    return names


def exported_series() -> set[str]:
    """Every series name fanflow.metrics exposes (counters `_total`, histograms `_bucket`...)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names = set()
    for metric in vars(fanflow.metrics).values():
        if isinstance(metric, MetricWrapperBase):
            names |= {metric._name + s for s in suffixes.get(str(metric._type), ("",))}
    return names


def test_promql_metric_names_helper() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, node_type) (rate(a_bucket{x="y z"}[5m]))) '
        "/ ignoring(q) sum without (w) (b_total offset 1m) > bool 2e3 and on (k) up"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "up"}
    assert {"fanflow_runs_started_total", "fanflow_node_duration_seconds_bucket"} <= (
        exported_series()
    )
    assert "fanflow_worker_tasks_in_flight" in exported_series()


def _dashboard_targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = list(dashboard["panels"])
    for panel in dashboard["panels"]:
        panels += panel.get("panels", [])  # collapsed rows
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", []) if "expr" in t]


def test_dashboard_queries_only_exported_metrics() -> None:
    known = exported_series() | PROMETHEUS_SERIES
    targets = _dashboard_targets()
    assert len(targets) >= 5, "the dashboard has almost no queries"
    for title, expr in targets:
        names = promql_metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        unknown = names - known
        assert not unknown, f"panel {title!r}: {sorted(unknown)} not in fanflow.metrics"
    used = {n for _, expr in targets for n in promql_metric_names(expr)}
    unused = {m._name for m in vars(fanflow.metrics).values() if isinstance(m, MetricWrapperBase)}
    unused = {name for name in unused if not any(u.startswith(name) for u in used)}
    assert not unused, f"metrics no panel shows: {sorted(unused)}"


#: Grafana's interval variables, and what they become for promtool
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def test_dashboard_queries_parse_with_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found: install the Debian package `prometheus` "
            "(apt-get install -y --no-install-recommends prometheus); .ci/run installs it",
            pytrace=False,
        )
    targets = _dashboard_targets()
    rules = []
    for i, (title, expr) in enumerate(targets):
        for variable, value in _GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"panel {title!r}: unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = re.sub(
        r"dashboard:query_(\d+)\b",
        lambda m: f"{m.group()} (panel {targets[int(m.group(1))][0]!r})",
        done.stdout + done.stderr,
    )
    assert done.returncode == 0, f"promtool rejects a dashboard query:\n{output}"


def test_grafana_provisioning_matches_compose() -> None:
    grafana = _services()["grafana"]
    mounts = {
        source: target
        for source, target, *_ in (str(m).split(":") for m in grafana["volumes"])
        if source.startswith("./")
    }
    assert mounts.get("./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )["datasources"]
    uids = {d["uid"] for d in datasources if d["type"] == "prometheus"}
    assert any(d["url"] == "http://prometheus:9090" for d in datasources)
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "fanflow.yml").read_text(encoding="utf-8")
    )["providers"]
    assert mounts["./deploy/grafana/dashboards"] in {p["options"]["path"] for p in providers}
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids, f"panel {panel['title']!r}: unknown datasource"
    env = _env(grafana)
    assert env.get("GF_AUTH_ANONYMOUS_ENABLED") == "true"
    assert env.get("GF_AUTH_ANONYMOUS_ORG_ROLE") == "Viewer"


# ---- broker credentials and permissions (deploy/rabbitmq) ----------------------------


def _definitions() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((RABBITMQ / "definitions.json").read_text())
    return loaded


def _permission(user: str) -> dict[str, str]:
    [entry] = [p for p in _definitions()["permissions"] if p["user"] == user]
    return {k: str(entry[k]) for k in ("configure", "write", "read")}


def _allows(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None  # RabbitMQ matches unanchored


def test_no_guest_credentials_anywhere() -> None:
    for path in (COMPOSE, *RABBITMQ.iterdir()):
        assert "guest" not in path.read_text(encoding="utf-8").lower(), f"{path}: guest"
    names = {user["name"] for user in _definitions()["users"]}
    assert "guest" not in names
    for name in FANFLOW_SERVICES:
        url = _env(_services()[name])["FANFLOW_AMQP_URL"]
        user, _, rest = url.removeprefix("amqp://").partition(":")
        password = rest.rpartition("@")[0]
        assert user == f"fanflow-{name}" and user in names, f"{name}: broker user {user}"
        # the password comes from the environment, with no default
        assert re.fullmatch(r"\$\{RABBITMQ_\w+_PASSWORD:\?[^}]*\}", password), f"{name}: {url}"
        assert url.endswith("@rabbitmq:5672/fanflow")


def test_the_worker_may_read_tasks_and_publish_results_only() -> None:
    from fanflow.mesh.topology import Topology

    topology = Topology(namespace="fanflow")
    worker = _permission("fanflow-worker")
    task_queues = [topology.task_queue(cls) for cls in topology.classes]
    delay_queues = [topology.delay_queue(cls, 1000) for cls in topology.classes]
    for name in [topology.tasks_exchange, *task_queues, *delay_queues, "amq.default",
                 topology.results_queue, topology.dead_letter_exchange,
                 topology.dead_tasks_queue, topology.events_exchange,
                 topology.control_exchange]:  # fmt: skip
        assert not _allows(worker["configure"], name), f"worker may configure {name}"
        assert not _allows(worker["write"], name), f"worker may write to {name}"
    for name in task_queues:
        assert _allows(worker["read"], name), f"worker cannot consume {name}"
    assert not _allows(worker["read"], topology.results_queue)
    assert _allows(worker["write"], topology.result_route().exchange)
    assert topology.result_route().exchange != ""  # never the default exchange
    assert _allows(worker["read"], topology.control_exchange)
    # its private control queue (server-named)
    for kind in ("configure", "write", "read"):
        assert _allows(worker[kind], "amq.gen-JzTY20BRgKO-HjmUJj0wLg")
    # it may not declare: the compose worker leaves that to the aggregator
    assert _env(_services()["worker"])["FANFLOW_DECLARE_TOPOLOGY"] == "false"
    for name in ("trigger", "aggregator"):
        rights = _permission(f"fanflow-{name}")
        assert _allows(rights["write"], "amq.default")
        for name_ in (topology.tasks_exchange, *task_queues):
            assert _allows(rights["write"], name_) and _allows(rights["configure"], name_)


def test_every_broker_user_has_a_required_password() -> None:
    renderer = _services()["rabbitmq-definitions"]
    env = _env(renderer)
    for user in _definitions()["users"]:
        variable = user["password_env"]
        assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]*\}}", env.get(variable, "")), variable
    rabbit = _services()["rabbitmq"]
    condition = rabbit["depends_on"]["rabbitmq-definitions"]["condition"]
    assert condition == "service_completed_successfully"
    conf = (RABBITMQ / "rabbitmq.conf").read_text()
    mounted = {v.split(":")[1] for v in rabbit["volumes"] if "rabbitmq-definitions" in v}
    assert any(f"definitions.local.path = {m}/definitions.json" in conf for m in mounted)


def test_the_result_key_is_required_by_worker_and_aggregator() -> None:
    for name in ("worker", "aggregator"):
        value = _env(_services()[name]).get("FANFLOW_RESULT_KEY", "")
        assert re.fullmatch(r"\$\{FANFLOW_RESULT_KEY:\?[^}]*\}", value), f"{name}: {value!r}"


def test_rendered_definitions_hash_each_password(tmp_path: Path) -> None:
    import base64
    import hashlib

    env = {user["password_env"]: f"pw-{user['name']}-123456" for user in _definitions()["users"]}
    out = tmp_path / "definitions.json"
    done = subprocess.run(
        [sys.executable, str(RABBITMQ / "render_definitions.py"),
         str(RABBITMQ / "definitions.json"), str(out)],
        env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rendered = json.loads(out.read_text())
    assert "password" not in out.read_text().replace("password_hash", "")
    for user in rendered["users"]:
        raw = base64.b64decode(user["password_hash"])
        salt, digest = raw[:4], raw[4:]
        password = f"pw-{user['name']}-123456"
        assert digest == hashlib.sha256(salt + password.encode()).digest()
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    missing = subprocess.run(
        [sys.executable, str(RABBITMQ / "render_definitions.py"),
         str(RABBITMQ / "definitions.json"), str(tmp_path / "x.json")],
        env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert missing.returncode != 0 and "RABBITMQ_ADMIN_PASSWORD" in missing.stderr
