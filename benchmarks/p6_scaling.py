"""P6: the scaling curve — one I/O-bound run on 1, 2 and 4 workers, prefetch per worker fixed.

    .venv/bin/python -m benchmarks.p6_scaling [--n 1000] [--workers 1 2 4] [--prefetch 16] [--quick]

The P2 workflow (n × 200 ms LLM calls, `parallel_nums` 100) on a fresh `fanflow dev` per
worker count, FANFLOW_WORKER_PREFETCH held at --prefetch (so one worker can have at most
that many calls in flight: the ideal is linear until the window of 100 or the upstream's
ceiling). Throughput = n / seconds of a blocking run; ratio to 1 worker.
"""

from __future__ import annotations

from benchmarks.common import (
    Row,
    Scratch,
    fanout_inputs,
    fanout_yaml,
    fmt_rate,
    machine,
    note,
    print_table,
    write_rows,
)
from benchmarks.common import parser as make_parser
from benchmarks.mesh import DevMesh
from benchmarks.upstream import Upstream, ceiling

DELAY_MS = 200
TARGETS = {2: "≥ 1.8×", 4: "≥ 3×"}


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--prefetch", type=int, default=16)
    args = parser.parse_args()
    n = 200 if args.quick else args.n
    print(f"P6 — {machine()}")
    scratch = Scratch()
    rates: dict[int, float] = {}
    notes: list[str] = []
    try:
        with Upstream(delay_ms=DELAY_MS) as upstream:
            up = ceiling(upstream.port, concurrency=400, seconds=2)
            notes.append(f"P6 upstream ({DELAY_MS} ms) ceiling: {fmt_rate(up)} (400 connections)")
            note(notes[-1])
            env = {
                "FANFLOW_LLM_BASE_URL": upstream.url,
                "FANFLOW_WORKER_PREFETCH": str(args.prefetch),
            }
            for workers in args.workers:
                log = scratch.path / f"dev-{workers}.log"
                with DevMesh(workers=workers, env=env, log=log) as mesh:
                    key = mesh.import_app(fanout_yaml(parallel_nums=100))
                    mesh.run(key, fanout_inputs(20))  # warm-up
                    seconds, data = mesh.run(key, fanout_inputs(n))
                    assert data["status"] == "succeeded", data.get("error")
                rates[workers] = n / seconds
                print(f"{workers} worker(s): {seconds:.1f} s")
    finally:
        scratch.close()
    base = rates[min(rates)]
    ideal_cap = min(100, args.prefetch * 1) / (DELAY_MS / 1000)
    rows = [
        Row(
            "P6",
            f"{n:,} × {DELAY_MS} ms, {w} worker(s), prefetch {args.prefetch}",
            fmt_rate(rate),
            f"1 worker {fmt_rate(base)} (ideal {fmt_rate(ideal_cap)})",
            f"{rate / base:.2f}×",
            TARGETS.get(w, ""),
        )
        for w, rate in rates.items()
    ]
    print_table(rows, title="P6 worker scaling")
    write_rows(args.json_out, rows, notes)


if __name__ == "__main__":
    main()
