"""`fanflow run --conversation FILE`: a conversation continued across invocations, with
memory (the window honoured) and conversation variables, against a real mock LLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.chat.conftest import MEMORY_CHAT, MockFactory, MockLLM
from tests.conftest import ROOT


def _run(
    mock: MockLLM, conversation: Path, query: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FANFLOW_LLM_BASE_URL": mock.url, "FANFLOW_LLM_API_KEY": "k"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fanflow_services.cli",
            "run",
            str(MEMORY_CHAT),
            "--conversation",
            str(conversation),
            "--query",
            query,
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def _llm_messages(mock: MockLLM) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = mock.last_body()["messages"]
    return messages


def test_turns_remember_earlier_turns_and_variables(mock_llm: MockFactory, tmp_path: Path) -> None:
    mock = mock_llm("--mode", "echo")
    conversation = tmp_path / "talk.json"

    first = _run(mock, conversation, "what is a spider", "-i", "topic=arachnids")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["answer"] == "what is a spider (turn 1)"
    assert _llm_messages(mock) == [
        {"role": "system", "content": "Topic arachnids; turn 1; previous question: "},
        {"role": "user", "content": "what is a spider"},
    ]

    # a later turn keeps the first turn's inputs (as Dify does), whatever it is given
    second = _run(mock, conversation, "how many legs", "-i", "topic=ignored")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["answer"] == "how many legs (turn 2)"
    assert _llm_messages(mock) == [
        {
            "role": "system",
            "content": "Topic arachnids; turn 2; previous question: what is a spider",
        },
        {"role": "user", "content": "what is a spider"},
        {"role": "assistant", "content": "what is a spider (turn 1)"},
        {"role": "user", "content": "how many legs"},
    ]

    third = _run(mock, conversation, "do they bite")
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout)["answer"] == "do they bite (turn 3)"
    assert [m["content"] for m in _llm_messages(mock)[1:]] == [
        "what is a spider",
        "what is a spider (turn 1)",
        "how many legs",
        "how many legs (turn 2)",
        "do they bite",
    ]

    # the window is 2 turns: the first turn drops out of the fourth's memory
    fourth = _run(mock, conversation, "are they insects")
    assert fourth.returncode == 0, fourth.stderr
    assert [m["content"] for m in _llm_messages(mock)[1:]] == [
        "how many legs",
        "how many legs (turn 2)",
        "do they bite",
        "do they bite (turn 3)",
        "are they insects",
    ]

    kept = json.loads(conversation.read_text(encoding="utf-8"))
    assert kept["inputs"] == {"topic": "arachnids"}
    assert kept["variables"] == {"turns": 4, "last_query": "are they insects"}
    assert [t["query"] for t in kept["turns"]] == [
        "what is a spider",
        "how many legs",
        "do they bite",
        "are they insects",
    ]


def test_a_conversation_file_needs_a_chatflow_and_a_readable_file(
    mock_llm: MockFactory, tmp_path: Path
) -> None:
    mock = mock_llm("--mode", "echo")
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2]", encoding="utf-8")
    result = _run(mock, broken, "hi")
    assert result.returncode == 2
    assert "broken.json" in result.stderr and "conversation_id" in result.stderr
    assert broken.read_text(encoding="utf-8") == "[1, 2]"  # left as it was

    workflow = subprocess.run(
        [
            sys.executable,
            "-m",
            "fanflow_services.cli",
            "run",
            str(ROOT / "examples" / "hello.yml"),
            "--conversation",
            str(tmp_path / "new.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert workflow.returncode == 2
    assert "only chatflows" in workflow.stderr
    assert not (tmp_path / "new.json").exists()
