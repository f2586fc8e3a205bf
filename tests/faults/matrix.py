"""The fault matrix's workload and checks: 3 concurrent runs of `workload.yml` (a code
iteration, then an LLM iteration against the mock), progress read from the store (which
may be down: a failed read is "unknown", not an error), exactness afterwards, and the
table of results every fault test adds a row to.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fanflow.mesh.driver import FINISHED
from fanflow.store import AppRecord, RunRecord
from tests.mesh.cluster import Cluster

WORKLOAD = Path(__file__).with_name("workload.yml")
RUNS = 3
ITEMS = 40
#: start, make, squares, asks, end + per item: iteration-start and body, in each iteration
NODES_PER_RUN = 5 + 4 * ITEMS
RUN_TIMEOUT_S = 150.0


def expected_outputs(items: int = ITEMS) -> dict[str, list[object]]:
    return {
        "squares": [x * x + 1 for x in range(items)],
        "texts": [f"item {x}" for x in range(items)],
    }


@dataclass
class Row:
    fault: str
    runs: int
    exact: int
    stuck: int
    recovery: str


@dataclass
class Matrix:
    rows: list[Row] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def add(self, fault: str, runs: int, exact: int, stuck: int, recovery: str) -> None:
        self.rows.append(Row(fault, runs, exact, stuck, recovery))

    def table(self) -> list[str]:
        lines = ["| fault | runs | exact | stuck | recovery |", "|---|---|---|---|---|"]
        lines += [
            f"| {r.fault} | {r.runs} | {r.exact} | {r.stuck} | {r.recovery} |" for r in self.rows
        ]
        return lines


MATRIX = Matrix()


@dataclass
class Workload:
    cluster: Cluster
    app: AppRecord
    run_ids: list[str]
    started_at: float = field(default_factory=time.monotonic)

    async def progress(self) -> int | None:
        """Node executions succeeded so far over all runs; None while the store is away."""
        store = self.cluster.store
        assert store is not None
        try:
            total = 0
            for run_id in self.run_ids:
                rows = await store.list_node_executions(run_id)
                total += sum(1 for row in rows if row.status == "succeeded")
        except Exception:
            return None
        return total

    async def until_progress(self, fraction: float, *, timeout_s: float = 60) -> int:
        """Until `fraction` of all node executions succeeded; the count then."""
        goal = int(fraction * NODES_PER_RUN * len(self.run_ids))
        deadline = time.monotonic() + timeout_s
        while True:
            done = await self.progress()
            if done is not None and done >= goal:
                return done
            assert time.monotonic() < deadline, (
                f"only {done} of {goal} node executions after {timeout_s} s\n{self.cluster.logs()}"
            )
            await asyncio.sleep(0.1)

    async def until_more_than(self, count: int, *, timeout_s: float = 60) -> float:
        """Seconds until more than `count` node executions succeeded (progress resumed)."""
        started = time.monotonic()
        while True:
            done = await self.progress()
            if done is not None and done > count:
                return time.monotonic() - started
            assert time.monotonic() - started < timeout_s, (
                f"no progress past {count} in {timeout_s} s\n{self.cluster.logs()}"
            )
            await asyncio.sleep(0.1)

    async def resumed_after(self, back: float, *, timeout_s: float = 60) -> float:
        """Seconds from `back` (monotonic) to the first commit seen after it: the first
        count read after `back`, then a larger one. Conservative: includes the wait for
        the next commit, and the reads' own delay."""
        deadline = back + timeout_s
        first = None
        while first is None:
            first = await self.progress()
            assert time.monotonic() < deadline, (
                f"store unreadable since the return\n{self.cluster.logs()}"
            )
        await self.until_more_than(first, timeout_s=max(1.0, deadline - time.monotonic()))
        return time.monotonic() - back

    async def runs(self) -> dict[str, RunRecord | None]:
        store = self.cluster.store
        assert store is not None
        return {run_id: await store.get_run(run_id) for run_id in self.run_ids}

    async def wait_finished(self, *, timeout_s: float = RUN_TIMEOUT_S) -> dict[str, RunRecord]:
        """Every run once finished (store errors on the way are retried); on timeout an
        AssertionError naming the runs still going, with the services' logs."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                runs = await self.runs()
            except Exception:
                runs = {}
            if runs and all(r is not None and r.status in FINISHED for r in runs.values()):
                return {k: v for k, v in runs.items() if v is not None}
            if time.monotonic() > deadline:
                going = {k: (v.status if v else None) for k, v in runs.items()}
                raise AssertionError(
                    f"runs not finished after {timeout_s} s: {going}\n{self.cluster.logs()}"
                )
            await asyncio.sleep(0.2)


async def start_workload(cluster: Cluster, *, runs: int = RUNS) -> Workload:
    app = await cluster.register(WORKLOAD)
    run_ids = [await cluster.start_run(app, {"n": ITEMS}) for _ in range(runs)]
    return Workload(cluster, app, run_ids)


async def check_exact(workload: Workload, fault: str, recovery: str) -> None:
    """Every run succeeded with the exact outputs and one node-execution row per node and
    scope, none left running; adds the fault's row to the matrix, then asserts."""
    stuck = 0
    try:
        runs = await workload.wait_finished()
    except AssertionError:
        runs = {}
        stuck = len(workload.run_ids)
        MATRIX.add(fault, len(workload.run_ids), 0, stuck, recovery)
        raise
    problems: list[str] = []
    exact = 0
    for run_id, run in runs.items():
        rows = await workload.cluster.node_executions(run_id)
        per_node = Counter((row.scope, row.node_id) for row in rows)
        wrong = []
        if run.status != "succeeded":
            wrong.append(f"status {run.status} ({run.error})")
        elif run.outputs != expected_outputs():
            wrong.append(f"outputs {run.outputs}")
        if len(per_node) != NODES_PER_RUN:
            wrong.append(f"{len(per_node)} node executions, expected {NODES_PER_RUN}")
        if any(n != 1 for n in per_node.values()):
            wrong.append(f"duplicate rows {[k for k, n in per_node.items() if n != 1]}")
        if any(row.status != "succeeded" for row in rows):
            wrong.append(f"rows not succeeded: {Counter(row.status for row in rows)}")
        if wrong:
            problems.append(f"run {run_id}: {'; '.join(wrong)}")
        else:
            exact += 1
    MATRIX.add(fault, len(runs), exact, stuck, recovery)
    assert not problems, "\n".join(problems) + "\n" + workload.cluster.logs()
