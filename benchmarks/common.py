"""What the probes share: workflow files, `fanflow run` as a measured subprocess, tables.

Every probe script takes `--json-out FILE` (its rows, for `run_all`) and prints its own
table. A row: probe, case, fanflow, reference, ratio, target (strings, as printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FANFLOW = [sys.executable, "-m", "fanflow_services.cli"]
SQUARES = ROOT / "tests" / "data" / "mesh" / "squares.yml"
KIT = Path(os.environ.get("FANFLOW_KIT", ROOT.parent / "shared"))
if not (KIT / "tools" / "dify_oracle.py").exists():
    KIT = Path("/work/shared")
ORACLE_SCRIPT = KIT / "tools" / "dify_oracle.py"
ORACLE_PYTHON = Path(
    os.environ.get("FANFLOW_ORACLE_PYTHON", ROOT / ".cache" / "graphon-venv" / "bin" / "python")
)
if not ORACLE_PYTHON.exists():
    ORACLE_PYTHON = Path("/work/main/.cache/graphon-venv/bin/python")


@dataclass
class Row:
    probe: str
    case: str
    fanflow: str
    reference: str = ""
    ratio: str = ""
    target: str = ""


def print_table(rows: Sequence[Row], *, title: str = "") -> None:
    if title:
        print(f"\n### {title}\n")
    print("| probe | case | fanflow | reference | ratio | target |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.probe} | {r.case} | {r.fanflow} | {r.reference} | {r.ratio} | {r.target} |")
    sys.stdout.flush()


def write_rows(path: Path | None, rows: Sequence[Row], notes: Sequence[str] = ()) -> None:
    if path is not None:
        path.write_text(json.dumps({"rows": [asdict(r) for r in rows], "notes": list(notes)}))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--json-out", type=Path, help="also write the rows as JSON here")
    return p


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"nproc {os.cpu_count()}, {cpu}, Python {platform.python_version()}"


def note(text: str) -> None:
    print(f"- {text}", flush=True)


# ---- workflows ----------------------------------------------------------------------------

_LLM_BODY = """\
      data:
        type: llm
        title: Ask
        iteration_id: each
        model: {provider: langgenius/openai/openai, name: bench, mode: chat, completion_params: {temperature: 0}}
        context: {enabled: false, variable_selector: []}
        prompt_template:
        - {role: user, text: 'item {{#each.item#}}'}
        vision: {enabled: false}
"""


def fanout_yaml(*, parallel_nums: int) -> str:
    """A parallel iteration (`parallel_nums` at a time) over `payload.items` (a json_object
    start input, so the list is not bound by a code node's 1,000-number output limit) whose
    body is one LLM call per item; the end lists the texts."""
    return f"""\
app: {{name: bench-fanout, mode: workflow}}
kind: app
version: 0.3.1
workflow:
  graph:
    nodes:
    - id: start
      data:
        type: start
        title: Start
        variables:
        - {{variable: payload, label: payload, type: json_object, required: true}}
    - id: each
      data:
        type: iteration
        title: Each
        iterator_selector: [start, payload, items]
        output_selector: [ask, text]
        is_parallel: true
        parallel_nums: {parallel_nums}
        error_handle_mode: terminated
        start_node_id: eachstart
    - id: eachstart
      parentId: each
      data: {{type: iteration-start, title: '', iteration_id: each}}
    - id: ask
      parentId: each
{_LLM_BODY}    - id: end
      data:
        type: end
        title: End
        outputs:
        - {{variable: texts, value_selector: [each, output]}}
    edges:
    - {{id: e1, source: start, target: each, sourceHandle: source}}
    - {{id: e3, source: eachstart, target: ask, sourceHandle: source}}
    - {{id: e4, source: each, target: end, sourceHandle: source}}
"""


ONE_TASK_YAML = """\
app: {name: bench-one-task, mode: workflow}
kind: app
version: 0.3.1
workflow:
  graph:
    nodes:
    - id: start
      data:
        type: start
        title: Start
        variables:
        - {variable: q, label: q, type: text-input, required: true}
    - id: ask
      data:
        type: llm
        title: Ask
        model: {provider: langgenius/openai/openai, name: bench, mode: chat, completion_params: {temperature: 0}}
        context: {enabled: false, variable_selector: []}
        prompt_template:
        - {role: user, text: '{{#start.q#}}'}
        vision: {enabled: false}
    - id: end
      data:
        type: end
        title: End
        outputs:
        - {variable: text, value_selector: [ask, text]}
    edges:
    - {id: e1, source: start, target: ask, sourceHandle: source}
    - {id: e2, source: ask, target: end, sourceHandle: source}
"""


def fanout_inputs(n: int) -> dict[str, Any]:
    return {"payload": {"items": list(range(n))}}


class Scratch:
    """A temporary directory for workflow and input files, removed at exit."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="fanflow-bench-")
        self.path = Path(self._dir.name)

    def write(self, name: str, text: str) -> Path:
        path = self.path / name
        path.write_text(text)
        return path

    def close(self) -> None:
        self._dir.cleanup()


# ---- `fanflow run` as a measured subprocess -------------------------------------------------


@dataclass
class EmbeddedRun:
    wall_s: float  # the whole command, interpreter start included
    elapsed_s: float  # the run itself: Dify's `elapsed_time` of the result
    peak_rss_mb: float  # the process's peak resident set (ru_maxrss)
    status: str
    outputs: dict[str, Any]


def fanflow_run(
    workflow: Path,
    inputs: dict[str, Any],
    *,
    env: dict[str, str],
    timeout_s: float,
    scratch: Scratch,
) -> EmbeddedRun:
    """`fanflow run --json` in a child process; its own peak RSS from wait4()."""
    inputs_file = scratch.write(f"inputs-{time.monotonic_ns()}.json", json.dumps(inputs))
    out = scratch.path / f"out-{time.monotonic_ns()}.json"
    argv = [
        *FANFLOW,
        "run",
        str(workflow),
        "--inputs-file",
        str(inputs_file),
        "--json",
        "--max-steps",
        "10000000",
    ]
    started = time.perf_counter()
    with out.open("wb") as stdout:
        process = subprocess.Popen(
            argv, env=env, stdout=stdout, stderr=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            os.wait4(process.pid, 0)
            raise TimeoutError(f"fanflow run {workflow.name} took over {timeout_s:g} s")
        time.sleep(0.02)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.perf_counter() - started
    text = out.read_text()
    data = json.loads(text) if text.strip() else {}
    return EmbeddedRun(
        wall_s=wall_s,
        elapsed_s=float(data.get("elapsed_time") or wall_s),
        peak_rss_mb=usage.ru_maxrss / 1024,
        status=str(data.get("status", f"exit {process.returncode}")),
        outputs=data.get("outputs") or {},
    )


def base_env(**extra: str) -> dict[str, str]:
    """This environment without FANFLOW_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANFLOW_")}
    env.update(extra)
    return env


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}/s"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "n/a"
