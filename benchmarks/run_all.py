"""Every probe of issue 8, one after the other, and one combined markdown table.

    .venv/bin/python -m benchmarks.run_all [--quick] [--only P1 P4] [--extra 'P3=--n 1000 5000']

Each probe runs as its own process (`python -m benchmarks.<probe> --json-out ...`) with a
time limit; a probe that fails is reported as such and the others still run. Prints the
date, the machine (nproc, CPU model) and the table: probe, case, fanflow, reference,
ratio, the target from the issue's "Must show".
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, Row, machine, print_table

PROBES = {
    "P1": "p1_fanout",
    "P2": "p2_latency",
    "P3": "p3_rss",
    "P4": "p4_blocking",
    "P5": "p5_code",
    "P6": "p6_scaling",
}
TIMEOUT_S = {"P1": 3600, "P2": 3600, "P3": 7200, "P4": 1200, "P5": 1800, "P6": 2400}
QUICK_TIMEOUT_S = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=sorted(PROBES), default=sorted(PROBES))
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="PROBE=ARGS",
        help="extra arguments for one probe, e.g. 'P3=--n 1000 5000'",
    )
    args = parser.parse_args()
    extra = {k: shlex.split(v) for k, _, v in (e.partition("=") for e in args.extra)}
    started = datetime.datetime.now(datetime.UTC)
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fanflow-bench-") as tmp:
        for probe in args.only:
            out = Path(tmp) / f"{probe}.json"
            argv = [
                sys.executable,
                "-m",
                f"benchmarks.{PROBES[probe]}",
                "--json-out",
                str(out),
                *(["--quick"] if args.quick else []),
                *extra.get(probe, []),
            ]
            print(f"\n== {probe}: {shlex.join(argv[1:])}", flush=True)
            t0 = time.monotonic()
            try:
                done = subprocess.run(
                    argv, cwd=ROOT, timeout=QUICK_TIMEOUT_S if args.quick else TIMEOUT_S[probe]
                )
                status = f"exit {done.returncode}" if done.returncode else ""
            except subprocess.TimeoutExpired:
                status = "timed out"
            if status or not out.exists():
                rows.append(Row(probe, f"FAILED ({status or 'no rows'})", ""))
                continue
            result = json.loads(out.read_text())
            rows += [Row(**r) for r in result["rows"]]
            notes += result["notes"]
            notes.append(f"{probe} took {time.monotonic() - t0:.0f} s")
    print(
        f"\n## fanflow benchmarks — {started:%Y-%m-%d %H:%M} UTC{' (quick)' if args.quick else ''}"
    )
    print(f"\nMachine: {machine()}\n")
    print_table(rows)
    print()
    for text in notes:
        print(f"- {text}")


if __name__ == "__main__":
    main()
