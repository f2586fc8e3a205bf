"""P3: peak RSS of `fanflow run` and of the aggregator at a small and a large item count.

    .venv/bin/python -m benchmarks.p3_rss [--n 10000 100000] [--quick]

The P1 workflow (LLM per item, upstream 0 ms, `parallel_nums` 100). Embedded: the peak
resident set (ru_maxrss) of one `fanflow run` process per size. Mesh: a fresh `fanflow dev`
per size (2 workers), the aggregator's VmHWM after the run. Ratio: large / small.
"""

from __future__ import annotations

from benchmarks.common import (
    Row,
    Scratch,
    base_env,
    fanflow_run,
    fanout_inputs,
    fanout_yaml,
    machine,
    print_table,
    write_rows,
)
from benchmarks.common import parser as make_parser
from benchmarks.mesh import DevMesh
from benchmarks.upstream import Upstream


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs=2, default=[10_000, 100_000])
    parser.add_argument("--no-mesh", action="store_true")
    parser.add_argument("--no-embedded", action="store_true")
    args = parser.parse_args()
    small, large = (200, 1000) if args.quick else args.n
    print(f"P3 — {machine()}")
    scratch = Scratch()
    rss: dict[tuple[str, int], float] = {}
    try:
        with Upstream(delay_ms=0) as upstream:
            workflow = scratch.write("fanout.yml", fanout_yaml(parallel_nums=100))
            for n in (small, large):
                if not args.no_embedded:
                    env = base_env(FANFLOW_LLM_BASE_URL=upstream.url)
                    run = fanflow_run(
                        workflow, fanout_inputs(n), env=env, timeout_s=7200, scratch=scratch
                    )
                    assert run.status == "succeeded", run
                    rss[("fanflow run", n)] = run.peak_rss_mb
                    print(f"embedded n={n}: {run.peak_rss_mb:.0f} MB in {run.elapsed_s:.1f} s")
                if not args.no_mesh:
                    env = {"FANFLOW_LLM_BASE_URL": upstream.url}
                    log = scratch.path / f"dev-{n}.log"
                    with DevMesh(workers=2, env=env, log=log) as mesh:
                        key = mesh.import_app(fanout_yaml(parallel_nums=100))
                        seconds, data = mesh.run(key, fanout_inputs(n))
                        assert data["status"] == "succeeded", data.get("error")
                        rss[("aggregator", n)] = mesh.peak_rss_mb("aggregator")
                    print(
                        f"mesh n={n}: aggregator {rss[('aggregator', n)]:.0f} MB in {seconds:.1f} s"
                    )
    finally:
        scratch.close()
    rows = [
        Row(
            "P3",
            f"{who} peak RSS, {large:,} vs {small:,} items",
            f"{rss[(who, large)]:.0f} MB",
            f"{rss[(who, small)]:.0f} MB",
            f"{rss[(who, large)] / rss[(who, small)]:.2f}×",
            "≤ 1.2× (100,000 vs 10,000)",
        )
        for who in ("fanflow run", "aggregator")
        if (who, small) in rss
    ]
    print_table(rows, title="P3 peak RSS")
    write_rows(args.json_out, rows)


if __name__ == "__main__":
    main()
