"""The `question-classifier` node: the model's pick becomes the taken edge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from fanflow.executors.question_classifier import run_question_classifier
from fanflow.resilience.upstreams import UpstreamFailure
from tests.llm.conftest import LLM_DATA, ROOT, MockFactory, make_task

CLASSES = [
    {"id": "c1", "name": "Billing for {{#start.product#}}"},
    {"id": "c2", "name": "Delivery"},
    {"id": "c3", "name": "Other", "label": "Fallback"},
]


def classifier_task(query: str, **extra: Any) -> Any:
    data = {
        "type": "question-classifier",
        "model": {"provider": "openai", "name": "router", "mode": "chat", **extra.pop("model", {})},
        "query_variable_selector": ["start", "q"],
        "classes": CLASSES,
        "instruction": "Customers of {{#start.product#}}",
        **extra,
    }
    return make_task("question-classifier", data, {"start.q": query, "start.product": "Acme"})


async def test_the_chosen_class_is_the_edge(mock_llm: MockFactory) -> None:
    mock = mock_llm()  # picks the category whose name the text holds
    outcome = await run_question_classifier(classifier_task("late delivery again"), mock.context())
    assert outcome.edge_handle == "c2"
    assert {k: v for k, v in outcome.outputs.items() if k != "usage"} == {
        "class_name": "Delivery",
        "class_label": "CLASS 2",
        "class_id": "c2",
    }
    assert outcome.outputs["usage"]["total_tokens"] == outcome.total_tokens > 0
    messages = mock.last_body()["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    document = json.loads(messages[-1]["content"])
    assert document == {
        "input_text": ["late delivery again"],
        "categories": [
            {"category_id": "c1", "category_name": "Billing for Acme"},
            {"category_id": "c2", "category_name": "Delivery"},
            {"category_id": "c3", "category_name": "Other"},
        ],
        "classification_instructions": ["Customers of Acme"],
    }


@pytest.mark.parametrize(
    ("reply", "class_id"),
    [
        ('```json\n{"category_id": "c3", "category_name": "Other"}\n```', "c3"),
        ('<think>maybe c2?</think>{"category_id": "c1", "category_name": "x"}', "c1"),
        ('{"category_id": "c9", "category_name": "Unknown"}', "c1"),  # unknown id: first
        ('{"category_id": "c3"}', "c1"),  # Dify wants both keys, else first
    ],
)
async def test_answers_map_to_classes_as_in_dify(
    mock_llm: MockFactory, reply: str, class_id: str
) -> None:
    mock = mock_llm(replies=[{"model": "router", "text": reply}])
    outcome = await run_question_classifier(classifier_task("anything"), mock.context())
    assert outcome.edge_handle == outcome.outputs["class_id"] == class_id


async def test_label_and_completion_mode(mock_llm: MockFactory) -> None:
    mock = mock_llm(
        replies=[{"model": "router", "json": {"category_id": "c3", "category_name": "Other"}}]
    )
    outcome = await run_question_classifier(
        classifier_task("x", model={"mode": "completion"}), mock.context()
    )
    assert outcome.outputs["class_label"] == "Fallback"
    assert len(mock.last_body()["messages"]) == 1


async def test_a_reply_without_json_is_a_format_failure(mock_llm: MockFactory) -> None:
    mock = mock_llm(replies=[{"model": "router", "text": "Delivery, I think."}])
    with pytest.raises(UpstreamFailure, match="holds no JSON object") as caught:
        await run_question_classifier(classifier_task("x"), mock.context())
    assert (caught.value.reason, caught.value.retryable) == ("format", True)


def fanflow_run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FANFLOW_LLM_")}
    return subprocess.run(
        [sys.executable, "-m", "fanflow_services.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean | env,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("question", "class_id", "route"),
    [
        ("I want a refund for my order", "1", "refund desk handles: I want a refund for my order"),
        ("Where is my shipping box?", "2", "shipping desk handles: Where is my shipping box?"),
    ],
)
def test_fanflow_run_takes_the_classified_branch(
    mock_llm: MockFactory, question: str, class_id: str, route: str
) -> None:
    mock = mock_llm()
    done = fanflow_run(
        str(LLM_DATA / "classify_route.yml"),
        "-i",
        f"q={question}",
        env={"FANFLOW_LLM_BASE_URL": mock.url},
    )
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)
    assert outputs["class_id"] == class_id and outputs["route"] == route
    assert mock.stats()["by_model"] == {"router": 1}


def test_fanflow_run_without_a_base_url_says_what_to_set() -> None:
    done = fanflow_run(str(LLM_DATA / "classify_route.yml"), "-i", "q=hi", env={})
    assert done.returncode == 1
    assert "classify (Classify): no base URL for LLM provider 'openai'" in done.stderr
    assert "FANFLOW_LLM_BASE_URL" in done.stderr
