"""P2 embedded: `fanflow run` of n LLM items at `parallel_nums` 100, vs the ideal.

    .venv/bin/python benchmarks/embedded_fanout.py [--items 1000] [--latency-ms 0 200]

For each latency, starts `benchmarks/fast_upstream.py`, measures its ceiling (requests/s
from 100 keep-alive connections), then times `fanflow run benchmarks/data/llm_fanout.yml`
as a subprocess (a new user's command) and prints its wall time (interpreter start
included), the run's own `elapsed_time`, the command's CPU time, tasks/s (of the run), the
run's ratio to the ideal (items / parallel_nums × latency) and the TCP connections the
upstream accepted. The machine's load average is printed: other processes make wall
times noisy, CPU times less so. Also times `fanflow run examples/hello.yml` (start-up cost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "benchmarks" / "data" / "llm_fanout.yml"
PARALLEL_NUMS = 100


def start_upstream(latency_ms: float, directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = directory / f"upstream-{latency_ms:g}.port"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "fast_upstream.py"),
         "--latency-ms", str(latency_ms), "--port-file", str(port_file)]
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline:
            raise SystemExit("fast_upstream did not start")
        time.sleep(0.02)
    return process, int(port_file.read_text())


async def ceiling(port: int, *, connections: int = 100, requests: int = 5000) -> float:
    """Requests/s the upstream answers over `connections` raw keep-alive connections."""
    body = b'{"model":"m","messages":[]}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    per_connection = requests // connections

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(per_connection):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return per_connection * connections / (time.perf_counter() - started)


def stats(port: int) -> dict[str, int]:
    async def get() -> dict[str, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stats HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        data: dict[str, int] = json.loads(await reader.readexactly(length))
        writer.close()
        return data

    return asyncio.run(get())


@dataclass
class Timing:
    wall_s: float  # the command, interpreter start included
    run_s: float  # the run itself (its `elapsed_time`)
    cpu_s: float  # user + system CPU of the command


def fanflow_run(workflow: Path, env: dict[str, str], *args: str) -> Timing:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "fanflow_services.cli", "run", str(workflow), "--json", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"fanflow run failed: {done.stderr[-2000:]}")
    cpu_s = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Timing(wall_s, json.loads(done.stdout)["elapsed_time"], cpu_s)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 200.0])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for latency_ms in args.latency_ms:
            process, port = start_upstream(latency_ms, Path(tmp))
            try:
                top = asyncio.run(ceiling(port))
                before = stats(port)
                env = {**os.environ, "FANFLOW_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1"}
                timing = fanflow_run(WORKFLOW, env, "-i", f"n={args.items}")
                after = stats(port)
            finally:
                process.terminate()
                process.wait()
            ideal = args.items / PARALLEL_NUMS * latency_ms / 1000
            connections = after["connections"] - before["connections"] - 1
            rows.append((latency_ms, top, timing, ideal, connections))
    hello = min(
        (fanflow_run(ROOT / "examples" / "hello.yml", dict(os.environ), "-i", "name=bench")
         for _ in range(3)),
        key=lambda t: t.wall_s,
    )  # fmt: skip
    print(f"fanflow run, {args.items} LLM items, parallel_nums {PARALLEL_NUMS}; load {load()}")
    print(f"{'latency':>8} {'upstream req/s':>15} {'wall s':>7} {'run s':>6} {'cpu s':>6} "
          f"{'tasks/s':>8} {'ideal s':>8} {'run/ideal':>9} {'TCP conns':>10}")  # fmt: skip
    for latency_ms, top, t, ideal, conns in rows:
        ratio = f"{t.run_s / ideal:.2f}" if ideal else "-"
        print(f"{latency_ms:>6g}ms {top:>15.0f} {t.wall_s:>7.2f} {t.run_s:>6.2f} {t.cpu_s:>6.2f} "
              f"{args.items / t.run_s:>8.0f} {ideal:>8.2f} {ratio:>9} {conns:>10}")  # fmt: skip
    print(f"fanflow run examples/hello.yml: {hello.wall_s:.2f} s wall, {hello.cpu_s:.2f} s CPU "
          "(best of 3)")  # fmt: skip
    print("upstream req/s: over 100 keep-alive connections, so at 200 ms it is the latency "
          "bound (100 / 0.2 s), not a CPU ceiling")  # fmt: skip


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
