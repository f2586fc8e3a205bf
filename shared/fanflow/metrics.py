"""Every Prometheus metric fanflow exports: the only module that defines them.

Names carry the `fanflow_` prefix and base units; no run ids in labels.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNS_STARTED = Counter("fanflow_runs_started_total", "Runs created.", ["app_mode"])
RUNS_FINISHED = Counter("fanflow_runs_finished_total", "Runs that ended, by status.", ["status"])
RUN_DURATION = Histogram(
    "fanflow_run_duration_seconds",
    "Wall time from run creation to its end.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200),
)
NODE_EXECUTIONS = Counter(
    "fanflow_node_executions_total",
    "Task node attempts executed by workers.",
    ["node_type", "status"],
)
NODE_DURATION = Histogram(
    "fanflow_node_duration_seconds", "Time a worker spent executing a task.", ["node_type"]
)
QUEUE_WAIT = Histogram(
    "fanflow_task_queue_wait_seconds",
    "From a task's publication to a worker picking it up.",
    ["node_class"],
)
TASKS_IN_FLIGHT = Gauge(
    "fanflow_worker_tasks_in_flight", "Tasks a worker is executing.", ["node_class"]
)
RESULTS_APPLIED = Counter(
    "fanflow_results_applied_total", "Task results applied to runs by aggregators.", ["outcome"]
)
AGGREGATOR_BATCH = Histogram(
    "fanflow_aggregator_batch_size",
    "Results per aggregator batch.",
    buckets=(1, 2, 5, 10, 20, 50, 100),
)
OUTBOX_PUBLISHED = Counter("fanflow_outbox_published_total", "Outbox messages relayed.", ["kind"])
HTTP_REQUESTS = Counter(
    "fanflow_http_requests_total", "Trigger API requests.", ["route", "method", "status"]
)

# ---- external calls (fanflow.resilience.upstreams): upstream labels are bounded names, never run ids ----
UPSTREAM_CALLS = Counter(
    "fanflow_upstream_calls_total",
    "Attempts at external calls, by outcome: success, or the failure reason.",
    ["upstream", "kind", "outcome"],
)
UPSTREAM_CALL_DURATION = Histogram(
    "fanflow_upstream_call_duration_seconds",
    "Duration of one attempt at an external call (rate-limit waits excluded).",
    ["upstream", "kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
UPSTREAM_RETRIES = Counter(
    "fanflow_upstream_retries_total",
    "In-worker retries of external calls, by the reason of the failure retried.",
    ["upstream", "kind", "reason"],
)
RATE_LIMIT_WAIT = Histogram(
    "fanflow_rate_limit_wait_seconds",
    "Time an external call waited for its upstream's concurrency slot and rate.",
    ["upstream", "kind"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CIRCUIT_BREAKER_STATE = Gauge(
    "fanflow_circuit_breaker_state",
    "Circuit breaker of an upstream: 0 closed, 1 half-open, 2 open.",
    ["upstream"],
)
SSRF_REFUSALS = Counter(
    "fanflow_http_ssrf_refusals_total",
    "http-request hops refused by the SSRF guard, by the kind of address.",
    ["category"],
)
NODE_RETRIES = Counter(
    "fanflow_node_retries_total",
    "Task attempts the scheduler sent again after a failure (delayed through the broker).",
    ["node_type"],
)

# ---- fleet-wide flow control (fanflow.resilience.redis_*, fanflow.llm) ----
FLOW_CONTROL_MODE = Gauge(
    "fanflow_flow_control_mode",
    "1 for the mode of limits and breakers in force: global (shared through Redis) or "
    "local (per worker process, Redis absent or not answering).",
    ["mode"],
)
FLOW_CONTROL_FALLBACKS = Counter(
    "fanflow_flow_control_fallbacks_total",
    "Times a process fell back to per-process limits because Redis stopped answering.",
)
FLOW_CONTROL_DEFERRED = Counter(
    "fanflow_flow_control_deferred_total",
    "Calls sent back to the scheduler (retry later) because a fleet-wide limit had no room "
    "within the in-worker wait bound, by the limit (scope and kind).",
    ["upstream", "kind", "limit"],
)
LLM_FAILOVERS = Counter(
    "fanflow_llm_failovers_total",
    "LLM calls that moved on to a fallback model, by the model that failed and why.",
    ["model", "reason"],
)
LLM_CACHE = Counter(
    "fanflow_llm_cache_requests_total",
    "Lookups of the LLM response cache (nodes with fanflow.cache): hit, miss, or no_app "
    "(the task did not carry its app, so it was not cached).",
    ["result"],
)
LLM_TOKENS = Counter(
    "fanflow_llm_tokens_total",
    "Tokens LLM answers billed (each answer once, retried attempts included, cache hits "
    "not), by model and kind (prompt, completion).",
    ["model", "kind"],
)
LLM_COST = Counter(
    "fanflow_llm_cost_total",
    "Cost of the billed LLM answers by model, from the prices file (FANFLOW_LLM_PRICES_FILE).",
    ["model", "currency"],
)

OUTBOX_PARKED = Counter(
    "fanflow_outbox_parked_total",
    "Outbox messages that can never be published (no queue routes them): the row is "
    "removed and the node it would have run failed.",
    ["kind"],
)
AGGREGATOR_TRANSIENT_ERRORS = Counter(
    "fanflow_aggregator_transient_errors_total",
    "Aggregator attempts that failed on a database that was away or busy; the messages "
    "were held and applied again after a backoff, their deliveries not spent.",
    ["queue"],
)
DEAD_LETTERS = Counter(
    "fanflow_dead_letters_total",
    "Dead-lettered messages the aggregator handled, by queue and outcome.",
    ["queue", "outcome"],
)
#: the label values of the aggregator's reliability counters
TRANSIENT_SOURCES = ("results", "dead_tasks", "dead_results", "outbox", "deadline")
DEAD_LETTER_OUTCOMES = {
    "dead_tasks": ("failed_node", "retried_later", "undecodable"),
    "dead_results": ("applied", "failed_node", "dropped", "undecodable"),
}


RESULTS_REJECTED = Counter(
    "fanflow_results_rejected_total",
    "Results the aggregator dropped unapplied because their signature was missing or wrong "
    "(forged, or signed with another deployment's key).",
    ["queue", "reason"],
)


def start_aggregator_series() -> None:
    """Create the aggregator's reliability series at 0: a counter first seen at 1 shows
    no increase, so alerts on the first dead letter or parked row would never fire."""
    for source in TRANSIENT_SOURCES:
        AGGREGATOR_TRANSIENT_ERRORS.labels(source)
    for queue, outcomes in DEAD_LETTER_OUTCOMES.items():
        for outcome in outcomes:
            DEAD_LETTERS.labels(queue, outcome)
    OUTBOX_PARKED.labels("task")
    for queue in ("results", "dead_results"):
        for reason in ("missing", "bad"):
            RESULTS_REJECTED.labels(queue, reason)
