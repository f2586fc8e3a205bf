"""What LLM calls cost: tokens and money per model, per run, and a per-run budget.

Every answer a model bills is counted once, when it arrives — retried attempts included
(their tokens were billed too), cache hits excluded (nothing was billed) — in
`fanflow_llm_tokens_total{model, kind}`, `fanflow_llm_cost_total{model, currency}`, the
node's `usage` output (Dify's price fields) and the run's ledger: a Redis hash per run
shared by the fleet (`FANFLOW_REDIS_URL`), else this process's memory. With a run budget
(`FANFLOW_LLM_RUN_BUDGET`, in the prices' currency), a call is refused once the run has
spent it, and the call that crosses it fails its node: the run stops with
`BudgetExceededError` naming the budget and what was spent.

Prices (`FANFLOW_LLM_PRICES_FILE`, YAML or JSON), per `provider:model` or glob pattern::

    "openai:gpt-4o": {prompt: 2.50, completion: 10.00}          # per million tokens
    "openai:gpt-4o-mini": {prompt: 0.15, completion: 0.60, per: 1000000, currency: USD}
    "ollama:*": {prompt: 0, completion: 0}
"""

from __future__ import annotations

import fnmatch
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import yaml

from fanflow.metrics import LLM_COST, LLM_TOKENS
from fanflow.resilience.redis_client import FleetRedis, FleetUnavailable
from fanflow.resilience.upstreams import UpstreamFailure

_ADD = """
redis.call('HINCRBY', KEYS[1], 'prompt_tokens', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'completion_tokens', ARGV[2])
local cost = redis.call('HINCRBYFLOAT', KEYS[1], 'cost', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return cost
"""
_SPENT = "return redis.call('HGET', KEYS[1], 'cost')"
#: how long a run's ledger is kept after its last call (runs end long before)
LEDGER_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Price:
    """Money per `per` tokens, prompt and completion."""

    prompt: float = 0.0
    completion: float = 0.0
    per: int = 1_000_000
    currency: str = "USD"

    def prompt_cost(self, tokens: int) -> float:
        return float(Decimal(str(self.prompt)) * tokens / self.per)

    def completion_cost(self, tokens: int) -> float:
        return float(Decimal(str(self.completion)) * tokens / self.per)


@dataclass(frozen=True)
class Prices:
    entries: Mapping[str, Price] = field(default_factory=dict)

    def of(self, model: str) -> Price | None:
        """The price of `provider:model`: its own entry, else the first matching pattern."""
        if model in self.entries:
            return self.entries[model]
        for pattern, price in self.entries.items():
            if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(model, pattern):
                return price
        return None

    @classmethod
    def load(cls, path: Path) -> Prices:
        try:
            text = path.read_text(encoding="utf-8")
            raw: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read the LLM prices file {path}: {exc}") from exc
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ValueError(f"{path}: expected a mapping of `provider:model` to prices")
        entries: dict[str, Price] = {}
        for name, entry in raw.items():
            known = {"prompt", "completion", "per", "currency"}
            if not isinstance(entry, Mapping) or set(entry) - known:
                raise ValueError(
                    f"{path}: the price of {name!r} must be a mapping with keys among "
                    f"{sorted(known)}"
                )
            try:
                price = Price(
                    prompt=float(entry.get("prompt", 0)),
                    completion=float(entry.get("completion", 0)),
                    per=int(entry.get("per", 1_000_000)),
                    currency=str(entry.get("currency", "USD")),
                )
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}: the price of {name!r}: {exc}") from exc
            if price.per <= 0 or price.prompt < 0 or price.completion < 0:
                raise ValueError(f"{path}: the price of {name!r}: need per > 0, prices >= 0")
            entries[str(name)] = price
        return cls(entries)


class Ledger(Protocol):
    async def add(self, run_id: str, prompt: int, completion: int, cost: float) -> float: ...
    async def spent(self, run_id: str) -> float: ...


class MemoryLedger:
    """This process's runs (`fanflow run`); the oldest forgotten past `max_runs`."""

    def __init__(self, *, max_runs: int = 10_000) -> None:
        self.max_runs = max_runs
        self._runs: OrderedDict[str, list[float]] = OrderedDict()

    async def add(self, run_id: str, prompt: int, completion: int, cost: float) -> float:
        totals = self._runs.setdefault(run_id, [0, 0, 0.0])
        self._runs.move_to_end(run_id)
        totals[0] += prompt
        totals[1] += completion
        totals[2] += cost
        while len(self._runs) > self.max_runs:
            self._runs.popitem(last=False)
        return totals[2]

    async def spent(self, run_id: str) -> float:
        totals = self._runs.get(run_id)
        return totals[2] if totals else 0.0

    def totals(self, run_id: str) -> tuple[int, int, float]:
        prompt, completion, cost = self._runs.get(run_id, [0, 0, 0.0])
        return int(prompt), int(completion), float(cost)


class RedisLedger:
    """Runs' spending shared by the fleet: `{prefix}:run:{run_id}:llm` {prompt_tokens,
    completion_tokens, cost}. While Redis does not answer, `fallback` (this process's)."""

    def __init__(self, redis: FleetRedis) -> None:
        self.redis = redis
        self.fallback = MemoryLedger()

    def _key(self, run_id: str) -> str:
        return self.redis.key("run", run_id, "llm")

    async def add(self, run_id: str, prompt: int, completion: int, cost: float) -> float:
        if self.redis.available:
            try:
                total = await self.redis.run(
                    _ADD, [self._key(run_id)], [prompt, completion, repr(cost), LEDGER_TTL_S]
                )
                return float(total)
            except FleetUnavailable:
                pass
        return await self.fallback.add(run_id, prompt, completion, cost)

    async def spent(self, run_id: str) -> float:
        if self.redis.available:
            try:
                value = await self.redis.run(_SPENT, [self._key(run_id)], [])
                return float(value) if value is not None else 0.0
            except FleetUnavailable:
                pass
        return await self.fallback.spent(run_id)


@dataclass
class CostAccounting:
    """Prices, the runs' ledger and the per-run budget of one process."""

    prices: Prices = field(default_factory=Prices)
    ledger: Ledger = field(default_factory=MemoryLedger)
    #: per run, in the prices' currency; None: no budget
    run_budget: float | None = None

    async def before_call(self, run_id: str, label: str) -> None:
        """Refuse a call once the run has spent its budget."""
        if self.run_budget is None:
            return
        spent = await self.ledger.spent(run_id)
        if spent >= self.run_budget:
            raise self._exceeded(label, spent)

    async def billed(
        self, run_id: str, label: str, model: str, prompt: int, completion: int
    ) -> Price | None:
        """Count one billed answer; its price (None: the model has none). Raises
        `BudgetExceededError` when this answer took the run past its budget."""
        price = self.prices.of(model)
        cost = price.prompt_cost(prompt) + price.completion_cost(completion) if price else 0.0
        LLM_TOKENS.labels(model, "prompt").inc(prompt)
        LLM_TOKENS.labels(model, "completion").inc(completion)
        if price is not None:
            LLM_COST.labels(model, price.currency).inc(cost)
        total = await self.ledger.add(run_id, prompt, completion, cost)
        if self.run_budget is not None and total > self.run_budget:
            raise self._exceeded(label, total)
        return price

    def _exceeded(self, label: str, spent: float) -> UpstreamFailure:
        return UpstreamFailure(
            f"{label}: the run's LLM budget of {self.run_budget:g} is spent "
            f"({spent:.6f} so far; FANFLOW_LLM_RUN_BUDGET): no more model calls in this run",
            reason="invalid",
            retryable=False,
            error_type="BudgetExceededError",
        )
