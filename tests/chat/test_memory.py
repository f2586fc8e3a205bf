"""Memory: which turns a node reads, and how they appear in its prompt."""

from __future__ import annotations

from typing import Any

import pytest

from fanflow.chat.memory import (
    history_limit,
    history_messages,
    history_text,
    window_turns,
    with_history_section,
)
from fanflow.errors import NodeError
from fanflow.llm.prompts import llm_messages

TURNS = [{"query": "q1", "answer": "a1"}, {"query": "q2", "answer": "a2"}]


def lookup(values: dict[str, Any]) -> Any:
    def find(selector: Any) -> Any:
        return values[".".join(selector)]

    return find


def test_windows_as_dify_reads_them() -> None:
    assert window_turns("llm", {"window": {"enabled": True, "size": 3}}) == 3
    assert window_turns("llm", {"window": {"enabled": False, "size": 3}}) == 500
    assert window_turns("llm", {}) == 500
    assert window_turns("llm", None) == 0
    # the classifier and the extractor take the size whenever a window is given
    assert window_turns("question-classifier", {"window": {"enabled": False, "size": 4}}) == 4
    assert window_turns("parameter-extractor", {}) == 0
    assert window_turns("code", {"window": {"enabled": True, "size": 3}}) == 0
    assert window_turns("llm", {"window": {"enabled": True, "size": 9999}}) == 500
    nodes = [("llm", {"window": {"enabled": True, "size": 2}}), ("question-classifier", None)]
    assert history_limit(nodes) == 2
    assert history_limit([]) == 0


def test_turns_as_messages_and_text() -> None:
    assert history_messages(TURNS) == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert history_text(TURNS) == "Human: q1\nAssistant: a1\nHuman: q2\nAssistant: a2"
    assert history_text(TURNS[:1], human_prefix="U", assistant_prefix="") == "U: q1\n: a1"


def test_chat_model_gets_turns_between_its_prompt_and_the_query() -> None:
    data = {
        "prompt_template": [{"role": "system", "text": "be brief"}],
        "memory": {"window": {"enabled": False}},
    }
    messages = llm_messages(data, lookup({"sys.query": "q3"}), label="n", history=TURNS)
    assert messages == [
        {"role": "system", "content": "be brief"},
        *history_messages(TURNS),
        {"role": "user", "content": "q3"},
    ]
    # without memory the turns are not sent, whatever is passed
    no_memory = {"prompt_template": [{"role": "user", "text": "hi"}]}
    assert llm_messages(no_memory, lookup({}), label="n", history=TURNS) == [
        {"role": "user", "content": "hi"}
    ]


def test_completion_model_gets_turns_as_text_with_its_role_prefixes() -> None:
    memory = {"role_prefix": {"user": "User", "assistant": "Bot"}, "window": {}}
    at_marker = {"prompt_template": {"text": "{{#histories#}}\nQ"}, "memory": memory}
    [message] = llm_messages(at_marker, lookup({}), label="n", history=TURNS)
    assert message["content"] == "{{User: q1\nBot: a1\nUser: q2\nBot: a2}}\nQ"
    before = {"prompt_template": {"text": "Q"}, "memory": memory}
    [message] = llm_messages(before, lookup({}), label="n", history=TURNS[:1])
    assert message["content"] == "User: q1\nBot: a1\nQ"
    with pytest.raises(NodeError, match="role_prefix") as caught:
        llm_messages(
            {"prompt_template": {"text": "Q"}, "memory": {}}, lookup({}), label="n", history=TURNS
        )
    assert caught.value.error_type == "MemoryRolePrefixRequiredError"


def test_classifier_and_extractor_prompts_carry_the_turns_in_their_system_message() -> None:
    prompt = [{"role": "system", "content": "classify"}, {"role": "user", "content": "x"}]
    changed = with_history_section(prompt, TURNS)
    assert changed[0]["content"].startswith("classify\n")
    assert history_text(TURNS) in changed[0]["content"]
    assert changed[1] == prompt[1] and prompt[0]["content"] == "classify"  # not modified
    assert with_history_section(prompt, []) == prompt
    one_prompt = [{"role": "user", "content": "classify x"}]
    assert history_text(TURNS) in with_history_section(one_prompt, TURNS)[0]["content"]
