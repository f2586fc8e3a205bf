"""How an llm node's prompt becomes chat messages, and its completion params request fields."""

from __future__ import annotations

import pytest

from fanflow.errors import NodeError
from fanflow.llm.params import completion_params
from fanflow.llm.prompts import llm_messages
from tests.llm.conftest import llm_data
from tests.nodes.conftest import make_lookup

LOOKUP = make_lookup(
    {
        "start.q": "what is fanflow?",
        "start.n": 3,
        "start.obj": {"a": 1},
        "start.none": None,
        "start.temp": "0.25",
        "kr.result": [
            {"content": "first doc", "summary": "sum 1", "metadata": {"_source": "knowledge"}},
            {"content": "second doc"},
        ],
        "start.docs": ["alpha", "beta"],
    }
)


def messages(data: dict) -> list[dict[str, str]]:
    return llm_messages(data, LOOKUP, label="n1 (LLM)")


def test_basic_messages_render_references_and_keep_roles() -> None:
    data = llm_data(
        [
            {"role": "system", "text": "Answer in {{#start.n#}} words."},
            {"role": "user", "text": "{{#start.q#}} {{#start.obj#}}"},
            {"role": "assistant", "text": "Sure."},
            {"role": "user", "text": "{{#start.none#}}"},  # renders empty: left out
        ]
    )
    assert messages(data) == [
        {"role": "system", "content": "Answer in 3 words."},
        {"role": "user", "content": 'what is fanflow? {"a": 1}'},
        {"role": "assistant", "content": "Sure."},
    ]


def test_jinja2_messages_use_jinja2_text_and_variables() -> None:
    data = llm_data(
        [
            {
                "role": "user",
                "text": "ignored",
                "edition_type": "jinja2",
                "jinja2_text": "{% for d in docs %}[{{ d }}]{% endfor %} {{ q | upper }} {{ missing }}!",
            }
        ],
        prompt_config={
            "jinja2_variables": [
                {"variable": "docs", "value_selector": ["start", "docs"]},
                {"variable": "q", "value_selector": ["start", "q"]},
            ]
        },
    )
    assert messages(data) == [{"role": "user", "content": "[alpha][beta] WHAT IS FANFLOW? !"}]


def test_context_string_array_and_knowledge_items() -> None:
    prompt = [{"role": "system", "text": "Use:\n{{#context#}}"}, {"role": "user", "text": "q"}]
    on_docs = llm_data(prompt, context={"enabled": True, "variable_selector": ["start", "docs"]})
    assert messages(on_docs)[0]["content"] == "Use:\nalpha\nbeta"
    on_kr = llm_data(prompt, context={"enabled": True, "variable_selector": ["kr", "result"]})
    assert messages(on_kr)[0]["content"] == "Use:\nsum 1\nfirst doc\nsecond doc"
    on_text = llm_data(prompt, context={"enabled": True, "variable_selector": ["start", "q"]})
    assert messages(on_text)[0]["content"] == "Use:\nwhat is fanflow?"
    off = llm_data(prompt, context={"enabled": False, "variable_selector": ["start", "q"]})
    assert messages(off)[0]["content"] == "Use:\n"


def test_bad_context_item_fails() -> None:
    lookup = make_lookup({"start.bad": [{"no_content": 1}]})
    data = llm_data(
        [{"role": "user", "text": "{{#context#}} q"}],
        context={"enabled": True, "variable_selector": ["start", "bad"]},
    )
    with pytest.raises(NodeError, match="invalid context item") as caught:
        llm_messages(data, lookup, label="n1")
    assert caught.value.error_type == "InvalidContextStructureError"


def test_missing_variable_fails_as_in_dify() -> None:
    data = llm_data([{"role": "user", "text": "{{#start.nope#}}"}])
    with pytest.raises(NodeError, match=r"n1 \(LLM\): variable \{\{#start.nope#\}\} not found"):
        messages(data)


def test_all_empty_prompt_fails() -> None:
    data = llm_data([{"role": "system", "text": ""}, {"role": "user", "text": "{{#start.none#}}"}])
    with pytest.raises(NodeError, match="every prompt message is empty") as caught:
        messages(data)
    assert caught.value.error_type == "NoPromptFoundError"


def test_unknown_role_fails() -> None:
    with pytest.raises(NodeError, match="role 'tool'"):
        messages(llm_data([{"role": "tool", "text": "x"}]))


def test_completion_mode_template_is_one_user_message() -> None:
    # Dify puts the (empty) chat history before a completion prompt, on a line of its own
    data = llm_data({"text": "Q: {{#start.q#}}"}, model={"mode": "completion"})
    assert messages(data) == [{"role": "user", "content": "\nQ: what is fanflow?"}]
    at_marker = llm_data({"text": "{{#histories#}}Q"}, model={"mode": "completion"})
    assert messages(at_marker) == [{"role": "user", "content": "{{}}Q"}]


def test_memory_appends_the_query_as_on_a_first_turn() -> None:
    lookup = make_lookup({"sys.query": "hello", "start.q": "x"})
    base = [{"role": "system", "text": "s"}]
    with_sys_query = llm_data(base, memory={"window": {"enabled": False}})
    assert llm_messages(with_sys_query, lookup, label="n")[-1] == {
        "role": "user",
        "content": "hello",
    }
    templated = llm_data(base, memory={"query_prompt_template": "Q={{#start.q#}}"})
    assert llm_messages(templated, lookup, label="n")[-1] == {"role": "user", "content": "Q=x"}
    assert len(llm_messages(llm_data(base), lookup, label="n")) == 1


def test_completion_params_forward_known_keys_and_render_references() -> None:
    params = {
        "temperature": "{{#start.temp#}}",
        "top_p": 0.9,
        "max_tokens": 64,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "seed": 7,
        "stop": "END",
        "top_k": 5,  # a plugin extra: not an OpenAI parameter
        "response_format": "json_object",
    }
    assert completion_params(params, LOOKUP) == {
        "temperature": 0.25,
        "top_p": 0.9,
        "max_tokens": 64,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "seed": 7,
        "stop": ["END"],
        "response_format": {"type": "json_object"},
    }


def test_completion_params_json_schema_response_format() -> None:
    schema = '{"name": "x", "schema": {"type": "object"}}'
    body = completion_params({"response_format": "json_schema", "json_schema": schema}, LOOKUP)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}},
    }
    bare = completion_params(
        {"response_format": "json_schema", "json_schema": '{"type": "object"}'}, LOOKUP
    )
    assert bare["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert completion_params({"stop": []}, LOOKUP) == {}
