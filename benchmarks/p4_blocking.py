"""P4: blocking-API overhead of a one-task workflow on `fanflow dev` (upstream 200 ms).

    .venv/bin/python -m benchmarks.p4_blocking [--calls 200] [--quick]

Sequential blocking `POST /v1/workflows/run` calls of start → llm → end; overhead = call
latency − the upstream's latency (200 ms). Reference: the same client calling the
upstream directly (its own overhead, over the same number of calls).
"""

from __future__ import annotations

import statistics
import time

import httpx

from benchmarks.common import ONE_TASK_YAML, Row, Scratch, machine, note, print_table, write_rows
from benchmarks.common import parser as make_parser
from benchmarks.mesh import DevMesh
from benchmarks.upstream import Upstream

DELAY_MS = 200


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    calls = 30 if args.quick else args.calls
    print(f"P4 — {machine()}")
    scratch = Scratch()
    try:
        with Upstream(delay_ms=DELAY_MS) as upstream:
            direct: list[float] = []
            with httpx.Client() as client:
                body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
                for _ in range(calls):
                    started = time.perf_counter()
                    client.post(f"{upstream.url}/chat/completions", json=body).raise_for_status()
                    direct.append((time.perf_counter() - started) * 1000 - DELAY_MS)
            env = {"FANFLOW_LLM_BASE_URL": upstream.url}
            latencies: list[float] = []
            with DevMesh(workers=args.workers, env=env, log=scratch.path / "dev.log") as mesh:
                key = mesh.import_app(ONE_TASK_YAML)
                for _ in range(5):
                    mesh.run(key, {"q": "warm-up"})
                for i in range(calls):
                    seconds, data = mesh.run(key, {"q": f"call {i}"})
                    assert data["status"] == "succeeded", data.get("error")
                    latencies.append(seconds * 1000 - DELAY_MS)
    finally:
        scratch.close()
    note(f"P4 {calls} calls; mean overhead {statistics.mean(latencies):.0f} ms")
    rows = [
        Row(
            "P4",
            f"blocking API overhead p{q}, {calls} calls",
            f"{percentile(latencies, q):.0f} ms",
            f"direct upstream call {percentile(direct, q):.1f} ms",
            f"{percentile(latencies, q) / (15 if q == 50 else 50):.1f}× target",
            "≤ 15 ms" if q == 50 else "≤ 50 ms",
        )
        for q in (50, 99)
    ]
    print_table(rows, title="P4 blocking-API overhead (latency − 200 ms)")
    write_rows(args.json_out, rows)


if __name__ == "__main__":
    main()
