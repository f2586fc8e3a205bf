"""Heartbeats: healthy only while fresh and every check passes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from fanflow.health import Heartbeat, read_heartbeat


async def _ok() -> str | None:
    return None


async def _broken() -> str | None:
    return "connection closed"


async def _hangs() -> str | None:
    await asyncio.sleep(60)
    return None


async def test_a_passing_heartbeat_is_healthy(tmp_path: Path) -> None:
    beat = Heartbeat("worker", tmp_path / "hb.json")
    beat.add_check("broker", _ok)
    assert await beat.beat() == {"broker": None}
    report = read_heartbeat(tmp_path / "hb.json")
    assert report.healthy, report.message


async def test_a_failing_check_makes_it_unhealthy_naming_the_check(tmp_path: Path) -> None:
    beat = Heartbeat("aggregator", tmp_path / "hb.json")
    beat.add_check("broker", _ok)
    beat.add_check("database", _broken)
    await beat.beat()
    report = read_heartbeat(tmp_path / "hb.json")
    assert not report.healthy
    assert report.message == "aggregator: database: connection closed"


async def test_a_stale_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "hb.json"
    record = {"component": "worker", "at": time.time() - 120, "ok": True, "checks": {}}
    path.write_text(json.dumps(record), encoding="utf-8")
    report = read_heartbeat(path, max_age_s=30)
    assert not report.healthy and "last heartbeat 120 s ago" in report.message


def test_no_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    report = read_heartbeat(tmp_path / "missing.json")
    assert not report.healthy and "not running" in report.message


async def test_the_run_loop_removes_its_file_when_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "hb.json"
    beat = Heartbeat("worker", path, interval_s=0.01)
    beat.add_check("broker", _ok)
    task = asyncio.create_task(beat.async_run())
    while not path.exists():
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not path.exists()


async def test_a_hung_check_counts_as_failing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("fanflow.health.CHECK_TIMEOUT_S", 0.05)
    beat = Heartbeat("worker", tmp_path / "hb.json")
    beat.add_check("consumers", _hangs)
    problems = await beat.beat()
    assert problems["consumers"] == "no answer within 0.05 s"
    assert not read_heartbeat(tmp_path / "hb.json").healthy


def test_a_heartbeat_without_a_time_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "hb.json"
    path.write_text(json.dumps({"component": "worker", "at": "soon", "ok": True}), "utf-8")
    report = read_heartbeat(path)
    assert not report.healthy and "unreadable heartbeat" in report.message
