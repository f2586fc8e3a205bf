"""P2: n × 200 ms LLM calls, `parallel_nums` p — embedded and mesh vs the ideal and Dify's engine.

    .venv/bin/python -m benchmarks.p2_latency [--n 1000] [--dify-n 200] [--quick]

One workflow for all engines: a parallel iteration over a json_object input's list whose
body is one LLM node, pointed at the local upstream answering after 200 ms (fanflow reads
FANFLOW_LLM_BASE_URL, Dify's engine the oracle's `llm_base_url`). Ideal = ceil(n / p) ×
200 ms. Times are the run's own (`elapsed_time` for fanflow run; the blocking call for the
mesh; `run_workflow()` for Dify's engine), interpreter starts excluded. Rows at n, p = 100
and, for the Dify comparison at p = 10 and 100, at --dify-n items (Dify's engine at p = 10
on 1,000 items takes minutes).
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from benchmarks.common import (
    ORACLE_PYTHON,
    ORACLE_SCRIPT,
    ROOT,
    Row,
    Scratch,
    base_env,
    fanflow_run,
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

DELAY_MS = 200


def dify_seconds(workflow: Path, inputs: Path, url: str, n: int) -> float:
    done = subprocess.run(
        [
            str(ORACLE_PYTHON),
            str(ROOT / "benchmarks" / "dify_timed.py"),
            str(ORACLE_SCRIPT),
            str(workflow),
            str(inputs),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["status"] == "succeeded" and result["outputs_len"] == n, result
    return float(result["seconds"])


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--dify-n", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-dify", action="store_true", help="skip Dify's engine")
    args = parser.parse_args()
    n, dify_n = (200, 50) if args.quick else (args.n, args.dify_n)
    print(f"P2 — {machine()}")
    rows: list[Row] = []
    notes: list[str] = []
    scratch = Scratch()
    cases = [(n, 100, True)] + [(dify_n, p, False) for p in (10, 100)]
    try:
        with Upstream(delay_ms=DELAY_MS) as upstream:
            up = ceiling(upstream.port, concurrency=400, seconds=2)
            notes.append(f"P2 upstream ({DELAY_MS} ms) ceiling: {fmt_rate(up)} (400 connections)")
            note(notes[-1])
            env = base_env(FANFLOW_LLM_BASE_URL=upstream.url)
            results: dict[tuple[int, int], dict[str, float]] = {}
            for items, p, _ in cases:
                workflow = scratch.write(f"fanout-{p}.yml", fanout_yaml(parallel_nums=p))
                inputs = scratch.write(f"in-{items}.json", json.dumps(fanout_inputs(items)))
                run = fanflow_run(
                    workflow, fanout_inputs(items), env=env, timeout_s=1800, scratch=scratch
                )
                assert run.status == "succeeded", run
                got = {"embedded": run.elapsed_s}
                if not args.no_dify:
                    got["dify"] = dify_seconds(workflow, inputs, upstream.url, items)
                results[(items, p)] = got
            mesh_env = {"FANFLOW_LLM_BASE_URL": upstream.url}
            with DevMesh(workers=args.workers, env=mesh_env, log=scratch.path / "dev.log") as mesh:
                keys = {p: mesh.import_app(fanout_yaml(parallel_nums=p)) for p in (10, 100)}
                mesh.run(keys[100], fanout_inputs(20))  # warm-up
                for items, p, _ in cases:
                    seconds, data = mesh.run(keys[p], fanout_inputs(items))
                    assert data["status"] == "succeeded", data.get("error")
                    results[(items, p)]["mesh"] = seconds
        for items, p, main_case in cases:
            got = results[(items, p)]
            ideal = math.ceil(items / p) * DELAY_MS / 1000
            case = f"{items:,} × {DELAY_MS} ms, p={p}"
            if main_case:
                rows.append(
                    Row(
                        "P2",
                        f"{case}, embedded",
                        f"{got['embedded']:.1f} s",
                        f"ideal {ideal:.1f} s",
                        ratio(got["embedded"], ideal),
                        "≤ 1.1×",
                    )
                )
                rows.append(
                    Row(
                        "P2",
                        f"{case}, mesh ({args.workers} workers)",
                        f"{got['mesh']:.1f} s",
                        f"ideal {ideal:.1f} s",
                        ratio(got["mesh"], ideal),
                        "≤ 1.3×",
                    )
                )
            if "dify" in got:
                for mode in ("embedded", "mesh"):
                    rows.append(
                        Row(
                            "P2",
                            f"{case}, {mode} vs Dify",
                            f"{got[mode]:.1f} s",
                            f"Dify's engine {got['dify']:.1f} s",
                            f"{got['dify'] / got[mode]:.2f}× faster",
                            "≥ 5× faster (p=10, 100)",
                        )
                    )
    finally:
        scratch.close()
    print_table(rows, title="P2 I/O-bound fan-out vs ideal and Dify's engine")
    write_rows(args.json_out, rows, notes)


if __name__ == "__main__":
    main()
