"""The README's examples: fanflow and Dify's own engine give the same, documented outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CASES = [
    (
        "hello.yml",
        {"name": "world"},
        {"greeting": "Hello, world!", "shout": "HELLO, WORLD!", "length": 13},
    ),
    (
        "fanout.yml",
        {"items": "apple\nbanana\n\n cherry "},
        {"count": 3, "results": ["0: APPLE (5)", "1: BANANA (6)", "2: CHERRY (6)"]},
    ),
    ("fanout.yml", {"items": ""}, {"count": 0, "results": []}),
]


@pytest.mark.parametrize(("name", "inputs", "expected"), CASES)
def test_example(
    name: str, inputs: dict[str, Any], expected: dict[str, Any], oracle: Any, tmp_path: Path
) -> None:
    inputs_file = tmp_path / "inputs.json"
    inputs_file.write_text(json.dumps(inputs), encoding="utf-8")
    command = [sys.executable, "-m", "fanflow_services.cli", "run", str(EXAMPLES / name)]
    done = subprocess.run(
        [*command, "--inputs-file", str(inputs_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == expected
    assert oracle(EXAMPLES / name, inputs)["outputs"] == expected
