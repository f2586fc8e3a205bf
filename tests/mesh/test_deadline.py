"""A run past its deadline is ended by the aggregator's sweep, whatever its tasks do."""

from __future__ import annotations

from pathlib import Path

from tests.mesh.conftest import MakeCluster

SLEEPY = Path(__file__).resolve().parents[1] / "data" / "mesh" / "sleepy.yml"


async def test_a_run_past_its_deadline_is_stopped(make_cluster: MakeCluster) -> None:
    cluster = await make_cluster(
        "sqlite",
        workers=1,
        aggregator_env={
            "FANFLOW_MAX_RUN_SECONDS": "2",
            "FANFLOW_DEADLINE_SWEEP_INTERVAL_S": "0.5",
        },
    )
    app = await cluster.register(SLEEPY)
    run_id = await cluster.start_run(app, {"n": 30})  # 30 s of sleeping, one at a time
    run = await cluster.wait(run_id, timeout_s=20)
    assert run.status == "stopped"
    assert "time limit of 2 s" in (run.error or "")
    assert run.finished_at is not None and run.finished_at - run.created_at < 10
    running = [e for e in await cluster.node_executions(run_id) if e.status == "running"]
    assert running == []
