"""P1: no-op fan-out — n LLM tasks (upstream 0 ms) through the mesh vs the AMQP floor and Celery.

    .venv/bin/python -m benchmarks.p1_fanout [--n 1000 10000] [--workers 2] [--quick]

fanflow: `fanflow dev` (PostgreSQL, 2 workers), one blocking run of a parallel iteration
(`parallel_nums` 100) whose body is one LLM call per item against the local upstream,
answering at once. Floor: raw aio-pika task → result round trips, same durability, 100 in
flight (`benchmarks/amqp_floor.py`). Celery: a chord of n no-op tasks on the same RabbitMQ
(`benchmarks/celery_chord.py`, its own venv). Rates are tasks/s, all measured in this run.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from benchmarks import amqp_floor, celery_chord
from benchmarks.common import (
    ROOT,
    Row,
    fanout_inputs,
    fanout_yaml,
    fmt_rate,
    machine,
    note,
    print_table,
    ratio,
    write_rows,
)
from benchmarks.common import parser as make_parser
from benchmarks.mesh import DevMesh
from benchmarks.upstream import Upstream, ceiling


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sizes = [200] if args.quick else args.n
    print(f"P1 — {machine()}")
    rows: list[Row] = []
    notes: list[str] = []
    celery_python = celery_chord.ensure_venv(ROOT)
    done = subprocess.run(
        [str(celery_python), str(ROOT / "benchmarks" / "celery_chord.py"), "--n", *map(str, sizes)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    celery = {int(k): v for k, v in json.loads(done.stdout.splitlines()[-1])["seconds"].items()}
    floor = {n: amqp_floor.round_trips(n) for n in sizes}
    with tempfile.TemporaryDirectory() as tmp, Upstream(delay_ms=0) as upstream:
        up_ceiling = ceiling(upstream.port, concurrency=50, seconds=2)
        notes.append(f"P1 upstream (0 ms) ceiling: {fmt_rate(up_ceiling)} (50 connections)")
        note(notes[-1])
        env = {"FANFLOW_LLM_BASE_URL": upstream.url, "FANFLOW_APP_MAX_ACTIVE_RUNS": "10"}
        log = Path(tmp) / "dev.log"
        with DevMesh(workers=args.workers, env=env, log=log) as mesh:
            key = mesh.import_app(fanout_yaml(parallel_nums=100))
            mesh.run(key, fanout_inputs(20))  # warm-up
            for n in sizes:
                seconds, data = mesh.run(key, fanout_inputs(n))
                assert data["status"] == "succeeded", data.get("error")
                assert len(data["outputs"]["texts"]) == n
                mesh_rate = n / seconds
                floor_rate = n / floor[n]
                celery_rate = n / celery[n]
                rows.append(
                    Row(
                        "P1",
                        f"mesh, n={n:,}, {args.workers} workers",
                        fmt_rate(mesh_rate),
                        f"Celery chord {fmt_rate(celery_rate)}",
                        ratio(mesh_rate, celery_rate),
                        "≥ 1.5× (n=10,000)",
                    )
                )
                rows.append(
                    Row(
                        "P1",
                        f"mesh, n={n:,}",
                        fmt_rate(mesh_rate),
                        f"aio-pika floor {fmt_rate(floor_rate)}",
                        ratio(mesh_rate, floor_rate),
                        "≥ 0.8× (n=10,000)",
                    )
                )
    print_table(rows, title="P1 no-op fan-out (tasks/s)")
    write_rows(args.json_out, rows, notes)


if __name__ == "__main__":
    main()
