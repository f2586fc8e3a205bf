"""P5 detail: per-call latency and CPU of the code sandbox, measured in one run.

Rows: a fresh interpreter per call (what fanflow did before the pool: `python -S -c` with
the child program), the warm pool without isolation (`unsafe-process`), and the warm pool
with its namespaces (the default). Sequential calls of a trivial `main`; CPU includes the
sandbox processes (read after the pool is closed and its processes reaped).

    .venv/bin/python benchmarks/sandbox_latency.py [calls]
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import subprocess
import sys
import time

from fanflow import sandbox
from fanflow.sandbox.isolation import INTERPRETER_FLAGS, interpreter
from fanflow.sandbox.pool import SandboxPool

CODE = "def main(x):\n    return {'y': x * x + 1}\n"


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def fresh_interpreter(calls: int) -> list[float]:
    latencies = []
    for i in range(calls):
        started = time.perf_counter()
        subprocess.run(
            [interpreter(), *INTERPRETER_FLAGS, "-c", f"x = {i}\nprint({{'y': x * x + 1}})"],
            check=True,
            capture_output=True,
        )
        latencies.append(time.perf_counter() - started)
    return latencies


async def pooled(calls: int, mode: str) -> list[float]:
    latencies = []
    with SandboxPool(size=1, mode=mode) as pool:  # type: ignore[arg-type]
        await sandbox.run_python(CODE, {"x": 0}, pool=pool)  # the zygote starts
        for i in range(calls):
            started = time.perf_counter()
            await sandbox.run_python(CODE, {"x": i}, pool=pool)
            latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rows = []
    for name, measure in (
        ("fresh interpreter per call", lambda: fresh_interpreter(calls)),
        ("pool, unsafe-process", lambda: asyncio.run(pooled(calls, "unsafe-process"))),
        ("pool, namespaces (default)", lambda: asyncio.run(pooled(calls, "namespaces"))),
    ):
        cpu_before = _cpu_s()
        latencies = measure()
        cpu_ms = (_cpu_s() - cpu_before) / calls * 1000
        rows.append((name, statistics.median(latencies) * 1000, cpu_ms))
    base_p50, base_cpu = rows[0][1], rows[0][2]
    print(
        f"{'sandbox':<30}{'p50 ms':>9}{'CPU ms/call':>13}{'p50 vs fresh':>14}{'CPU vs fresh':>14}"
    )
    for name, p50, cpu in rows:
        print(f"{name:<30}{p50:>9.2f}{cpu:>13.2f}{base_p50 / p50:>13.1f}x{base_cpu / cpu:>13.1f}x")
    print(
        f"isolation cost per call: p50 {rows[2][1] - rows[1][1]:+.2f} ms, "
        f"CPU {rows[2][2] - rows[1][2]:+.2f} ms ({calls} sequential calls each)"
    )


if __name__ == "__main__":
    main()
