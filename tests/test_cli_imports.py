"""`fanflow run` starts fast: it loads none of the service stack (store, broker, web)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what only the mesh commands need
SERVICE_MODULES = ("sqlalchemy", "alembic", "aio_pika", "aiormq", "fastapi", "uvicorn", "asyncpg")

PROBE = """
import json, sys
from fanflow.cli import app
try:
    app(["run", sys.argv[1], "-i", "name=probe"], standalone_mode=False)
finally:
    print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def test_fanflow_run_imports_no_service_module() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "examples" / "hello.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout)  # the run printed its outputs
    loaded = json.loads(done.stderr.strip().splitlines()[-1])
    heavy = [m for m in loaded if m.split(".")[0] in SERVICE_MODULES]
    assert heavy == []
    assert "rich" not in loaded  # the progress bar and error messages import it when used


def test_the_public_surface_resolves_and_loads_nothing_until_used() -> None:
    probe = (
        "import json, sys, fanflow\n"
        "before = sorted(sys.modules)\n"
        "missing = [n for n in fanflow.__all__ if getattr(fanflow, n, None) is None]\n"
        "print(json.dumps({'before': before, 'missing': missing}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    report = json.loads(done.stdout)
    assert report["missing"] == []
    loaded = [m for m in report["before"] if m.split(".")[0] in (*SERVICE_MODULES, "httpx")]
    assert loaded == [], f"`import fanflow` loaded {loaded}"
