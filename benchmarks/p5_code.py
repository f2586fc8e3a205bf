"""P5: code-node items/s — `tests/data/mesh/squares.yml` (n items, `parallel_nums` 50).

    .venv/bin/python -m benchmarks.p5_code [--n 1000] [--quick]

Embedded (`fanflow run`, the run's `elapsed_time`) and mesh (`fanflow dev`, 2 workers,
a blocking run). Reference: a bare interpreter start (`python -I -c pass`, median of 10)
— what a sandbox that starts one per call pays per item.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from benchmarks.common import (
    SQUARES,
    Row,
    Scratch,
    base_env,
    fanflow_run,
    fmt_rate,
    machine,
    print_table,
    write_rows,
)
from benchmarks.common import parser as make_parser
from benchmarks.mesh import DevMesh

TARGET = 300.0


def interpreter_start_s() -> float:
    times = []
    for _ in range(10):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    n = 200 if args.quick else args.n
    print(f"P5 — {machine()}")
    start_s = interpreter_start_s()
    scratch = Scratch()
    try:
        run = fanflow_run(SQUARES, {"n": n}, env=base_env(), timeout_s=1800, scratch=scratch)
        assert run.status == "succeeded" and len(run.outputs["results"]) == n, run.status
        with DevMesh(workers=args.workers, env={}, log=scratch.path / "dev.log") as mesh:
            key = mesh.import_app(SQUARES.read_text())
            mesh.run(key, {"n": 10})  # warm-up
            seconds, data = mesh.run(key, {"n": n})
            assert data["status"] == "succeeded", data.get("error")
    finally:
        scratch.close()
    reference = f"interpreter start {start_s * 1000:.0f} ms (serial {fmt_rate(1 / start_s)})"
    rows = [
        Row(
            "P5",
            f"code node, {n:,} items, embedded",
            fmt_rate(n / run.elapsed_s),
            reference,
            f"{n / run.elapsed_s / TARGET:.2f}× target",
            "≥ 300/s",
        ),
        Row(
            "P5",
            f"code node, {n:,} items, mesh ({args.workers} workers)",
            fmt_rate(n / seconds),
            reference,
            f"{n / seconds / TARGET:.2f}× target",
            "≥ 300/s",
        ),
    ]
    print_table(rows, title="P5 code-node throughput")
    write_rows(args.json_out, rows)


if __name__ == "__main__":
    main()
