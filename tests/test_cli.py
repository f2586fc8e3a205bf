"""The `fanflow` command as users run it: real subprocesses, exit codes, stdout and stderr.

Exit codes: 0 the run succeeded (or partially), 1 it failed or was stopped, 2 the workflow
or the inputs are invalid (nothing ran).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI_DATA = ROOT / "tests" / "data" / "cli"
DIFY_DATA = ROOT / "tests" / "data" / "dify"
DIFY_FILES = sorted(p for p in DIFY_DATA.rglob("*") if p.suffix in (".yml", ".yaml"))
#: the only reasons a file among Dify's own exports and fixtures may be refused
#: (tool nodes: refused only for a provider fanflow lacks, named)
ALLOWED_PROBLEMS = (
    "unsupported node type",
    "not a Dify app",
    "app mode",
    "built-in tool provider",
    "tool provider",
)
PYTHON_TRACEBACK = "Traceback (most recent call last)"

DATA_KEYS = {
    "id",
    "workflow_id",
    "status",
    "outputs",
    "error",
    "elapsed_time",
    "total_tokens",
    "total_steps",
    "created_at",
    "finished_at",
    "exceptions_count",
}


def fanflow(
    *args: str | Path,
    timeout_s: float = 60,
    columns: int | None = None,
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a pipe would: no terminal, no COLUMNS from the test's own terminal.

    `columns` sets COLUMNS, for tests about what is printed rather than how it is wrapped.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    env.update(env_extra or {})
    done = subprocess.run(
        [sys.executable, "-m", "fanflow_services.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env=env,
        cwd=ROOT,
    )
    assert PYTHON_TRACEBACK not in done.stderr, done.stderr
    return done


def flat(text: str) -> str:
    """Whitespace collapsed, so a message reads the same however the console wrapped it."""
    return " ".join(text.split())


# ---- run -----------------------------------------------------------------------------------


def test_run_prints_the_outputs_as_json() -> None:
    done = fanflow("run", CLI_DATA / "greet.yml", "-i", "name=Bob")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "greeting": "Hello, Bob!",
        "shout": "HELLO, BOB!",
        "length": 11,
    }


def test_run_json_prints_the_blocking_response_data() -> None:
    done = fanflow("run", CLI_DATA / "greet.yml", "--input", "name=Ann", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data) == DATA_KEYS
    uuid.UUID(data["id"])
    assert isinstance(data["workflow_id"], str) and data["workflow_id"]
    assert data["status"] == "succeeded"
    assert data["outputs"] == {"greeting": "Hello, Ann!", "shout": "HELLO, ANN!", "length": 11}
    assert data["error"] is None
    assert isinstance(data["elapsed_time"], float) and data["elapsed_time"] >= 0
    assert data["total_tokens"] == 0
    assert data["total_steps"] == 4
    assert isinstance(data["created_at"], int) and isinstance(data["finished_at"], int)
    assert data["created_at"] <= data["finished_at"]
    assert data["exceptions_count"] == 0


def test_failed_run_exits_1_and_still_prints_json() -> None:
    done = fanflow("run", CLI_DATA / "fails.yml", "--json")
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert set(data) == DATA_KEYS
    assert data["status"] == "failed"
    assert data["outputs"] == {}
    assert "kaboom" in data["error"]
    assert "boom" in data["error"] and "Boom" in data["error"]  # node id and title
    assert "failed" in done.stderr and "kaboom" in done.stderr


def test_failed_run_without_json_prints_empty_outputs() -> None:
    done = fanflow("run", CLI_DATA / "fails.yml")
    assert done.returncode == 1
    assert json.loads(done.stdout) == {}


def test_handled_failure_is_partial_success_and_exits_0() -> None:
    done = fanflow("run", CLI_DATA / "fail_branch.yml", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["status"] == "partial-succeeded"
    assert data["exceptions_count"] == 1
    assert list(data["outputs"]) == ["error"]
    assert "kaboom" in data["outputs"]["error"]


def test_iteration_continue_on_error_runs_end_to_end() -> None:
    done = fanflow("run", CLI_DATA / "iteration_errors.yml", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["status"] == "partial-succeeded"
    assert data["outputs"] == {"out": [10, None, 30, 40]}


def test_max_steps_stops_the_run_and_exits_1() -> None:
    done = fanflow("run", CLI_DATA / "greet.yml", "-i", "name=Bob", "--max-steps", "2", "--json")
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert data["status"] == "stopped"
    assert data["outputs"] == {}
    assert "2 steps" in data["error"]
    assert "stopped" in done.stderr


def test_run_honours_the_limits_of_the_environment() -> None:
    """`fanflow run` reads FANFLOW_MAX_STEPS like the mesh does; the option wins over it."""
    done = fanflow(
        "run", CLI_DATA / "greet.yml", "-i", "name=Bob", "--json",
        env_extra={"FANFLOW_MAX_STEPS": "2"},
    )  # fmt: skip
    assert done.returncode == 1
    assert "2 steps" in json.loads(done.stdout)["error"]
    done = fanflow(
        "run", CLI_DATA / "greet.yml", "-i", "name=Bob", "--max-steps", "50",
        env_extra={"FANFLOW_MAX_STEPS": "2"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_run_honours_the_task_timeout_of_the_environment(tmp_path: Path) -> None:
    workflow = tmp_path / "slow.yml"
    workflow.write_text(SLOW_CODE, encoding="utf-8")
    done = fanflow("run", workflow, "--json", env_extra={"FANFLOW_TASK_TIMEOUT_S": "0.5"})
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert data["status"] == "failed"
    assert "timed out after 0.5 s" in data["error"]


def test_run_honours_the_run_deadline_of_the_environment(tmp_path: Path) -> None:
    workflow = tmp_path / "slow.yml"
    workflow.write_text(SLOW_CODE, encoding="utf-8")
    started = time.monotonic()
    done = fanflow("run", workflow, "--json", env_extra={"FANFLOW_MAX_RUN_SECONDS": "0.5"})
    assert time.monotonic() - started < 20  # the code node sleeps 30 s
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert data["status"] == "stopped"
    assert "0.5" in data["error"], data["error"]


SLOW_CODE = """
app: {mode: workflow, name: slow}
kind: app
version: 0.3.0
workflow:
  graph:
    nodes:
      - id: start
        data: {type: start, title: Start, variables: []}
      - id: slow
        data:
          type: code
          title: Slow
          code_language: python3
          code: "import time\\ndef main():\\n    time.sleep(30)\\n    return {'x': 1}"
          variables: []
          outputs: {x: {type: number}}
      - id: end
        data: {type: end, title: End, outputs: [{variable: x, value_selector: [slow, x]}]}
    edges:
      - {id: e1, source: start, target: slow}
      - {id: e2, source: slow, target: end}
"""


def test_invalid_workflow_exits_2_naming_every_problem() -> None:
    done = fanflow("run", CLI_DATA / "invalid.yml")
    assert done.returncode == 2
    assert done.stdout == ""
    text = flat(done.stderr)
    assert "3 problem(s)" in text
    for problem in (
        "built-in tool provider 'weather' (tool 'current') is not available; fanflow has",
        "at node weather (Weather Tool that fetches the current conditions for the requested city)",
        "edge 'e4' to missing node 'nowhere' at node end (Finish)",
        "missing node 'ghost' at node reader (Reader)",
    ):
        assert problem in text


def test_run_error_messages_keep_square_brackets_of_titles() -> None:
    """Node titles are user text: never read as console markup."""
    done = fanflow("run", CLI_DATA / "invalid_brackets.yml")
    assert done.returncode == 2, done.stderr
    text = flat(done.stderr)
    assert "at node weather ([json] Weather)" in text
    assert "at node reader ([/b] Reader)" in text


def test_missing_file_exits_2() -> None:
    done = fanflow("run", CLI_DATA / "no-such-file.yml")
    assert done.returncode == 2
    assert "cannot read file" in done.stderr


def test_missing_required_input_exits_2_naming_it() -> None:
    done = fanflow("run", CLI_DATA / "greet.yml")
    assert done.returncode == 2
    assert done.stdout == ""
    assert re.search(r"\bname\b.*required", flat(done.stderr)), done.stderr


def test_wrongly_typed_input_exits_2_naming_it() -> None:
    done = fanflow("run", CLI_DATA / "greet.yml", "-i", "name=Bob", "-i", "times=many")
    assert done.returncode == 2
    assert "times" in done.stderr


@pytest.mark.parametrize("pair", ["name", "=Bob"])
def test_input_without_name_and_value_exits_2(pair: str) -> None:
    done = fanflow("run", CLI_DATA / "greet.yml", "-i", pair)
    assert done.returncode == 2
    assert "NAME=VALUE" in done.stderr


def test_inputs_file_is_read_and_input_options_win(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"name": "File", "times": 2}), encoding="utf-8")
    done = fanflow("run", CLI_DATA / "greet.yml", "--inputs-file", inputs)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["greeting"] == "Hello, File!"
    done = fanflow("run", CLI_DATA / "greet.yml", "--inputs-file", inputs, "-i", "name=Cli")
    assert json.loads(done.stdout)["greeting"] == "Hello, Cli!"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('["name", "Bob"]', "expected a JSON object"),
        ('"Bob"', "expected a JSON object"),
        ("{not json", "--inputs-file"),
    ],
)
def test_inputs_file_not_an_object_exits_2(tmp_path: Path, content: str, expected: str) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(content, encoding="utf-8")
    done = fanflow("run", CLI_DATA / "greet.yml", "--inputs-file", inputs, columns=1000)
    assert done.returncode == 2
    assert expected in done.stderr
    assert str(inputs) in done.stderr


def test_missing_inputs_file_exits_2(tmp_path: Path) -> None:
    done = fanflow("run", CLI_DATA / "greet.yml", "--inputs-file", tmp_path / "absent.json")
    assert done.returncode == 2
    assert "--inputs-file" in done.stderr


# ---- validate ------------------------------------------------------------------------------


def _problems(stderr: str) -> list[str]:
    return [line[4:] for line in stderr.splitlines() if line.startswith("  - ")]


def test_validate_lists_every_problem_of_a_file() -> None:
    done = fanflow("validate", CLI_DATA / "invalid.yml", CLI_DATA / "greet.yml")
    assert done.returncode == 2
    assert f"{CLI_DATA / 'greet.yml'}: ok" in done.stdout
    text = flat(done.stderr)
    assert f"{CLI_DATA / 'invalid.yml'}: invalid" in text
    assert "built-in tool provider 'weather' (tool 'current') is not available" in text
    assert "at node weather (Weather Tool that" in text
    assert "edge 'e4' to missing node 'nowhere' at node end (Finish)" in text
    assert "missing node 'ghost' at node reader (Reader)" in text
    assert len(_problems(done.stderr)) == 3


def test_validate_prints_one_problem_per_line() -> None:
    """Each problem is one line on stderr (for grep), however narrow the console."""
    done = fanflow("validate", CLI_DATA / "invalid.yml")
    lines = done.stderr.splitlines()
    assert lines[0] == f"{CLI_DATA / 'invalid.yml'}: invalid"
    assert len(lines) == 4, done.stderr
    assert all(line.startswith("  - ") for line in lines[1:]), done.stderr


def test_validate_valid_files_exits_0() -> None:
    done = fanflow("validate", CLI_DATA / "greet.yml", CLI_DATA / "fails.yml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": ok") == 2
    assert done.stderr == ""


def test_validate_every_dify_file_refuses_only_unsupported_things() -> None:
    assert len(DIFY_FILES) > 20
    done = fanflow("validate", *DIFY_FILES, timeout_s=120, columns=1000)
    assert done.returncode == 2
    ok = {line[: -len(": ok")] for line in done.stdout.splitlines() if line.endswith(": ok")}
    invalid = {
        line[: -len(": invalid")] for line in done.stderr.splitlines() if line.endswith(": invalid")
    }
    assert ok and invalid
    assert ok | invalid == {str(p) for p in DIFY_FILES}
    problems = _problems(done.stderr)
    assert problems
    for problem in problems:
        assert problem.startswith(ALLOWED_PROBLEMS), problem


@pytest.mark.parametrize(
    "path", DIFY_FILES, ids=[str(p.relative_to(DIFY_DATA)) for p in DIFY_FILES]
)
def test_validate_each_dify_file(path: Path) -> None:
    done = fanflow("validate", path, columns=1000)
    assert done.returncode in (0, 2), done.stderr
    if done.returncode == 0:
        assert done.stdout.strip() == f"{path}: ok"
        assert done.stderr == ""
    else:
        problems = _problems(done.stderr)
        assert problems, done.stderr
        assert all(p.startswith(ALLOWED_PROBLEMS) for p in problems), done.stderr
