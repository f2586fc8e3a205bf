"""P2 embedded: `fanflow run` of n LLM items at `parallel_nums` 100, vs the ideal.

    .venv/bin/python benchmarks/embedded_fanout.py [--items 1000] [--latency-ms 0 200]

For each latency, starts `benchmarks/fast_upstream.py`, measures its ceiling (requests/s
from 100 keep-alive connections), then times `fanflow run benchmarks/data/llm_fanout.yml`
as a subprocess (a new user's command, interpreter start included) and prints wall time,
tasks/s, the ratio to the ideal (items / parallel_nums × latency) and the TCP connections
the upstream accepted. Also times `fanflow run examples/hello.yml` (start-up cost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
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


def fanflow_run(workflow: Path, env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "fanflow.cli", "run", str(workflow), *args],
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"fanflow run failed: {done.stderr[-2000:]}")
    return elapsed


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
                wall = fanflow_run(WORKFLOW, env, "-i", f"n={args.items}")
                after = stats(port)
            finally:
                process.terminate()
                process.wait()
            ideal = args.items / PARALLEL_NUMS * latency_ms / 1000
            rows.append(
                (latency_ms, top, wall, args.items / wall, ideal,
                 after["connections"] - before["connections"] - 1)
            )  # fmt: skip
    hello = min(
        fanflow_run(ROOT / "examples" / "hello.yml", dict(os.environ), "-i", "name=bench")
        for _ in range(3)
    )
    print(f"fanflow run, {args.items} LLM items, parallel_nums {PARALLEL_NUMS}")
    print(f"{'latency':>8} {'upstream req/s':>15} {'wall s':>8} {'tasks/s':>8} "
          f"{'ideal s':>8} {'× ideal':>8} {'TCP conns':>10}")  # fmt: skip
    for latency_ms, top, wall, rate, ideal, conns in rows:
        ratio = f"{wall / ideal:.2f}" if ideal else "-"
        print(f"{latency_ms:>6g}ms {top:>15.0f} {wall:>8.2f} {rate:>8.0f} {ideal:>8.2f} "
              f"{ratio:>8} {conns:>10}")  # fmt: skip
    print(f"fanflow run examples/hello.yml: {hello:.2f} s (best of 3)")


if __name__ == "__main__":
    main()
