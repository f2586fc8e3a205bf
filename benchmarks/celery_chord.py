"""The Celery reference: a chord of n no-op tasks on the same RabbitMQ, Redis results.

Runs in its own venv (`.cache/celery-venv`, made by `ensure_venv()`): Celery is a benchmark
dependency, never one of fanflow's. This file imports nothing from fanflow or benchmarks
when run there:

    .cache/celery-venv/bin/python benchmarks/celery_chord.py --n 1000 10000

Same durability as fanflow: a quorum queue, persistent messages, publisher confirms, late
(manual, after the task) acks. The worker is `celery worker` with the prefork pool, one
process per CPU (Celery's default), started and stopped here. Prints one JSON object:
{"seconds": {n: s}}; the chord's header results go to Redis, its callback counts them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

VERSION = "5.7.0"
QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench-celery")
BROKER = os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND = os.environ.get("BENCH_CELERY_BACKEND", "redis://127.0.0.1:6379/0")


def ensure_venv(root: Path) -> Path:
    """The venv's python, created (pip install celery[redis]) when missing."""
    venv = root / ".cache" / "celery-venv"
    python = venv / "bin" / "python"
    stamp = venv / f".celery-{VERSION}"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"celery[redis]=={VERSION}",
            ],
            check=True,
        )
        stamp.touch()
    return python


def _app():  # type: ignore[no-untyped-def]
    from celery import Celery
    from kombu import Queue

    app = Celery("celery_chord", broker=BROKER, backend=BACKEND)
    app.conf.update(
        task_queues=[Queue(QUEUE, queue_arguments={"x-queue-type": "quorum"}, durable=True)],
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_default_delivery_mode="persistent",
        broker_transport_options={"confirm_publish": True},
        worker_detect_quorum_queues=True,
        result_expires=600,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="noop")
    def noop(i: int) -> int:
        return i

    @app.task(name="collect")
    def collect(results: list[int]) -> int:
        return len(results)

    return app, noop, collect


if os.environ.get("BENCH_CELERY_WORKER"):
    app, noop, collect = _app()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    from celery import chord

    global QUEUE
    QUEUE = f"bench-celery-{uuid.uuid4().hex[:10]}"
    os.environ["BENCH_CELERY_QUEUE"] = QUEUE
    app, noop, collect = _app()
    here = Path(__file__).resolve().parent
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_chord",
            "worker",
            "-Q",
            QUEUE,
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"{QUEUE}@%h",
        ],
        cwd=here,
        env={**os.environ, "BENCH_CELERY_WORKER": "1", "BENCH_CELERY_QUEUE": QUEUE},
        stdout=sys.stderr,
        stderr=sys.stderr,
    )
    seconds: dict[int, float] = {}
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[f"{QUEUE}@{os.uname().nodename}"], timeout=1):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the celery worker did not start")
        chord(noop.s(i) for i in range(50))(collect.s()).get(timeout=60)  # warm-up
        for n in args.n:
            started = time.perf_counter()
            result = chord(noop.s(i) for i in range(n))(collect.s())
            count = result.get(timeout=600)
            seconds[n] = time.perf_counter() - started
            assert count == n, count
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        with app.connection_for_write() as connection:
            connection.default_channel.queue_delete(QUEUE)
            connection.default_channel.exchange_delete(QUEUE)
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
