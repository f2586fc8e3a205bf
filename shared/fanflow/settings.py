"""Settings of every fanflow process, from `FANFLOW_*` environment variables.

One object per process, built at the entry point and passed down.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fanflow import defaults

DEFAULT_DATABASE_URL = defaults.DATABASE_URL

if TYPE_CHECKING:
    from fanflow.dsl.limits import DslLimits
    from fanflow.mesh.signing import ResultKey
    from fanflow.mesh.topology import Topology
    from fanflow.scheduler import Limits
    from fanflow.templating.environment import TemplateLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FANFLOW_", extra="ignore", populate_by_name=True)

    database_url: str = DEFAULT_DATABASE_URL
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    #: prefix of every queue and exchange name; lets several deployments share a broker
    namespace: str = "fanflow"
    admin_token: str | None = None

    # ---- run limits (Dify: 500 steps, 1200 s; fanflow: configurable) ----
    max_steps: int = defaults.MAX_STEPS
    max_run_seconds: float = defaults.MAX_RUN_SECONDS
    #: per-app cap on runs in progress; more → 429
    app_max_active_runs: int = 100
    #: how long a blocking /workflows/run waits before answering with the run so far
    blocking_timeout_s: float = defaults.MAX_RUN_SECONDS

    # ---- run lifecycle (services/trigger/async_runs.py, callbacks.py) ----
    #: how long an `Idempotency-Key` stands for its run
    idempotency_retention_s: float = Field(default=24 * 3600, gt=0)
    #: HMAC-SHA256 key of async runs' callbacks (`X-Fanflow-Signature`); unset: no callbacks
    callback_secret: str | None = None
    callback_max_attempts: int = Field(default=5, ge=1)
    #: wait before the 2nd try; doubles per try
    callback_backoff_s: float = Field(default=1.0, ge=0)
    callback_timeout_s: float = Field(default=10.0, gt=0)

    # ---- workflow imports (fanflow.dsl.limits): larger files and graphs → 400 / 413 ----
    dsl_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    dsl_max_nodes: int = Field(default=2_000, ge=1)
    dsl_max_edges: int = Field(default=10_000, ge=1)
    dsl_max_values: int = Field(default=250_000, ge=1)

    # ---- worker ----
    worker_queues: str = "llm,http,code,tool"
    #: prefetch of every class this worker serves; unset: per class, as below
    worker_prefetch: int | None = None
    task_timeout_s: float = defaults.TASK_TIMEOUT_S
    code_timeout_s: float = 60.0
    code_memory_mb: int = 512
    drain_timeout_s: float = 30.0

    # ---- worker prefetch per class: a class's concurrency in one worker process ----
    #: unset: FANFLOW_WORKER_PREFETCH if set, else the class's default (fanflow.mesh.prefetch:
    #: llm and http 64 — they wait on I/O —, tool 16, code the number of CPUs)
    worker_prefetch_llm: int | None = Field(default=None, ge=1)
    worker_prefetch_http: int | None = Field(default=None, ge=1)
    worker_prefetch_code: int | None = Field(default=None, ge=1)
    worker_prefetch_tool: int | None = Field(default=None, ge=1)

    # ---- template rendering bounds (fanflow.templating.environment; applied with
    # fanflow.nodes.template.configure_limits(settings.template_limits())) ----
    #: seconds one template render may take (it runs on the host's event loop)
    template_render_s: float = Field(default=0.5, gt=0)
    #: characters (or items) all values made during one render may total
    template_allocation_budget: int = Field(default=8_000_000, ge=1)

    # ---- code sandbox (fanflow.sandbox.process, fanflow.sandbox.pool) ----
    #: `namespaces`: user code runs isolated (bubblewrap); without namespaces code tasks
    #: fail. `unsafe-process`: no isolation at all, only resource limits (logged loudly)
    sandbox: Literal["namespaces", "unsafe-process"] = "namespaces"
    #: warm zygotes per process; unset: the worker's prefetch, or the CPU count embedded
    code_pool_size: int | None = None
    #: CPU seconds per code run (unset: only the wall-clock limit)
    code_cpu_s: int | None = None
    #: processes per sandbox (RLIMIT_NPROC and a pids cgroup) and its /tmp size
    code_max_processes: int = 64
    code_tmp_mb: int = 64
    # a code node's output limits; Dify's CODE_MAX_* names are accepted too
    code_max_string_length: int = Field(
        default=400_000,
        validation_alias=AliasChoices("FANFLOW_CODE_MAX_STRING_LENGTH", "CODE_MAX_STRING_LENGTH"),
    )
    code_max_number: int = Field(
        default=9_223_372_036_854_775_807,
        validation_alias=AliasChoices("FANFLOW_CODE_MAX_NUMBER", "CODE_MAX_NUMBER"),
    )
    code_min_number: int = Field(
        default=-9_223_372_036_854_775_807,
        validation_alias=AliasChoices("FANFLOW_CODE_MIN_NUMBER", "CODE_MIN_NUMBER"),
    )
    code_max_precision: int = Field(
        default=20,
        validation_alias=AliasChoices("FANFLOW_CODE_MAX_PRECISION", "CODE_MAX_PRECISION"),
    )
    code_max_depth: int = Field(
        default=5, validation_alias=AliasChoices("FANFLOW_CODE_MAX_DEPTH", "CODE_MAX_DEPTH")
    )
    code_max_string_array_length: int = Field(
        default=30,
        validation_alias=AliasChoices(
            "FANFLOW_CODE_MAX_STRING_ARRAY_LENGTH", "CODE_MAX_STRING_ARRAY_LENGTH"
        ),
    )
    code_max_object_array_length: int = Field(
        default=30,
        validation_alias=AliasChoices(
            "FANFLOW_CODE_MAX_OBJECT_ARRAY_LENGTH", "CODE_MAX_OBJECT_ARRAY_LENGTH"
        ),
    )
    code_max_number_array_length: int = Field(
        default=1_000,
        validation_alias=AliasChoices(
            "FANFLOW_CODE_MAX_NUMBER_ARRAY_LENGTH", "CODE_MAX_NUMBER_ARRAY_LENGTH"
        ),
    )

    # ---- LLM providers (fanflow.llm.providers) ----
    #: the OpenAI-compatible base URL (…/v1) of every provider the providers file leaves out
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    #: YAML or JSON: per-provider and per-model base URL, key and model name
    llm_providers_file: Path | None = None
    #: one chat completion request, connect to last byte
    llm_timeout_s: float = 60.0
    #: YAML or JSON: `{provider:model or glob: {prompt, completion, per, currency}}`, money
    #: per `per` (default 1,000,000) tokens (fanflow.llm.costs)
    llm_prices_file: Path | None = None
    #: the most one run may spend on LLM calls, in the prices' currency (unset: no limit)
    llm_run_budget: float | None = Field(default=None, gt=0)

    # ---- tool nodes (fanflow.tools) ----
    #: YAML or JSON: tool providers' keys and base URLs, custom OpenAPI providers
    tools_file: Path | None = None

    # ---- external calls (fanflow.resilience.upstreams) and the http-request node (fanflow.resilience.ssrf) ----
    #: let http-request nodes reach loopback, private and link-local addresses (SSRF guard off)
    http_allow_private_networks: bool = False
    #: comma-separated CIDRs, addresses and host names (`*.corp.example`) that http-request
    #: nodes may reach although they are not public
    http_allow_list: Annotated[tuple[str, ...], NoDecode] = ()
    #: circuit breaker of every upstream (see fanflow.resilience.breaker)
    breaker_window_size: int = 50
    breaker_min_calls: int = 20
    breaker_failure_rate: float = 0.5
    breaker_slow_call_s: float = 30.0
    breaker_slow_call_rate: float = 0.8
    breaker_open_wait_s: float = 30.0
    breaker_half_open_probes: int = 3
    breaker_probe_timeout_s: float = 60.0
    #: YAML or JSON: `{upstream name or glob: {max_concurrency, rps, burst}}`, e.g.
    #: `openai:gpt-4o: {rps: 5}`, `host:*.example.com: {max_concurrency: 4}`
    upstream_limits_file: Path | None = None
    #: limits of the upstreams the file leaves out (per worker process; unset: none)
    upstream_max_concurrency: int | None = None
    upstream_rps: float | None = None

    # ---- fleet-wide state in Redis (fanflow.resilience.redis_*) ----
    #: e.g. redis://127.0.0.1:6379/0: the upstream limits file's entries (and rpm, tpm,
    #: per_app, per_user) hold for the whole fleet, breakers are shared, the LLM cache
    #: lives there; unset (or Redis not answering): per worker process
    redis_url: str | None = None
    #: prefix of every key (unset: FANFLOW_NAMESPACE)
    redis_prefix: str | None = None
    #: a Redis command's time limit; after a failure, per-process state for redis_retry_s
    redis_timeout_s: float = 1.0
    redis_retry_s: float = 5.0
    #: a concurrency lease's life: longer than any call, so a killed worker's slots return
    redis_lease_ttl_s: float = 120.0
    #: how old a worker's copy of a closed shared breaker may be: an upstream opened by one
    #: worker is refused by all within this time
    redis_breaker_sync_s: float = 0.2

    # ---- pooled HTTP connections of LLM and http-request nodes (fanflow.http_pool) ----
    #: connections kept per upstream host; unset: the worker's prefetch (its concurrency
    #: per class), 256 for `fanflow run`
    http_max_connections: int | None = None
    #: how long an idle kept-alive connection stays open
    http_keepalive_expiry_s: float = 30.0

    # ---- aggregator ----
    aggregator_batch_size: int = 50
    #: how long a batch of results waits for more while the results queue still holds
    #: ready messages; when it holds none the batch is applied at once
    aggregator_batch_wait_s: float = 0.05
    outbox_sweep_interval_s: float = 1.0
    deadline_sweep_interval_s: float = 5.0

    #: fault injection for tests: publish every result twice (at-least-once in the extreme)
    fault_duplicate_results: bool = False

    # ---- topology ----
    delivery_limit: int = defaults.DELIVERY_LIMIT
    #: declare exchanges, queues and bindings at start; false for a worker whose broker
    #: user may not configure them (deploy/rabbitmq): it then needs them declared already
    declare_topology: bool = True

    # ---- result signing (fanflow.mesh.signing): workers sign, the aggregator verifies ----
    #: the deployment's secret (>= 16 bytes); or a file holding it (a compose/k8s secret)
    result_key: SecretStr | None = None
    result_key_file: Path | None = None
    #: run workers and aggregators with no key: unsigned results accepted, so anything that
    #: reaches the broker can forge any run's result (a local experiment only)
    insecure_unsigned_results: bool = False

    #: worker and aggregator: where to write the heartbeat `fanflow health FILE` reads
    #: (unset: none)
    health_file: Path | None = None
    metrics_port: int | None = Field(default=None, description="worker/aggregator /metrics port")

    def topology(self) -> Topology:
        """The broker names and queue arguments of this deployment."""
        from fanflow.mesh.topology import Topology

        return Topology(namespace=self.namespace, delivery_limit=self.delivery_limit)

    def result_signing_key(self) -> ResultKey | None:
        """The deployment's result key; None only when insecure_unsigned_results is set.
        ValueError naming the settings when no key is configured (or it is too short)."""
        from fanflow.mesh.signing import ResultKey

        secret: str | None = None
        if self.result_key is not None:
            secret = self.result_key.get_secret_value()
        elif self.result_key_file is not None:
            try:
                secret = self.result_key_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"FANFLOW_RESULT_KEY_FILE {self.result_key_file}: {exc}") from exc
        if secret:
            return ResultKey(secret)
        if self.insecure_unsigned_results:
            return None
        raise ValueError(
            "no result key: set FANFLOW_RESULT_KEY (or FANFLOW_RESULT_KEY_FILE) to the same "
            "secret on every worker and aggregator of this deployment, or "
            "FANFLOW_INSECURE_UNSIGNED_RESULTS=true to accept forgeable unsigned results"
        )

    def dsl_limits(self) -> DslLimits:
        """The size limits of an imported workflow file and its graph."""
        from fanflow.dsl.limits import DslLimits

        return DslLimits(
            max_bytes=self.dsl_max_bytes,
            max_nodes=self.dsl_max_nodes,
            max_edges=self.dsl_max_edges,
            max_values=self.dsl_max_values,
        )

    def limits(self) -> Limits:
        """Per-run limits: steps, deadline, and a task's time limit."""
        from fanflow.scheduler import Limits

        return Limits(
            max_steps=self.max_steps,
            max_run_seconds=self.max_run_seconds,
            task_timeout_s=self.task_timeout_s,
        )

    def template_limits(self) -> TemplateLimits:
        """The bounds of one template render (output size stays Dify's 400 000)."""
        from fanflow.templating.environment import TemplateLimits

        return TemplateLimits(
            seconds=self.template_render_s, allocation_budget=self.template_allocation_budget
        )

    @field_validator("http_allow_list", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(entry.strip() for entry in value.split(",") if entry.strip())
        return value
