"""Template-transform rendering."""

from __future__ import annotations

from typing import Any

import pytest

from fanflow.errors import NodeError
from fanflow.nodes import render_template, template_variables
from fanflow.nodes.template import MAX_OUTPUT_LENGTH

from .conftest import make_lookup


@pytest.mark.parametrize(
    ("template", "variables", "expected"),
    [
        ("{{ a }} {{ b }}", {"a": "x", "b": 2}, "x 2"),
        ("{{ missing }}|", {}, "|"),  # undefined renders empty, as in Dify's sandbox
        ("{{ f.__globals__ }}|", {"f": render_template}, "|"),  # the sandbox hides internals
        ("{% for i in items %}{{ i }},{% endfor %}", {"items": [1, 2]}, "1,2,"),
        ("{{ obj.k }} {{ obj['k'] }}", {"obj": {"k": "v"}}, "v v"),
        ("{{ n | default('none') }}", {}, "none"),
        ("{{ s | upper }}", {"s": "hi"}, "HI"),
        ("<b>{{ s }}</b>", {"s": "<i>"}, "<b><i></b>"),  # no autoescape
        ("line\n", {}, "line"),  # trailing newline dropped, as jinja2.Template does
        ("{{ v }}", {"v": None}, "None"),
        ("{{ v }}", {"v": True}, "True"),
        ("{{ xs | length }}", {"xs": [1, 2, 3]}, "3"),
        ("{{ items | join(', ') }}", {"items": ["a", "b"]}, "a, b"),
        ("", {}, ""),
    ],
)
def test_render(template: str, variables: dict[str, Any], expected: str) -> None:
    assert render_template(template, variables) == expected


@pytest.mark.parametrize(
    ("template", "variables", "message"),
    [
        ("{{ a ", {}, "template syntax error at line 1"),
        ("{% for %}", {}, "template syntax error"),
        ("{% endfor %}", {}, "template syntax error"),
        ("{{ a / b }}", {"a": 1, "b": 0}, "ZeroDivisionError"),
        ("{{ ''.__class__.__mro__ }}", {}, "template error"),  # sandbox refuses
        ("{{ missing.attr }}", {}, "'missing' is undefined"),  # as jinja2.Template in Dify
        ("{{ missing() }}", {}, "template error"),
    ],
)
def test_render_errors(template: str, variables: dict[str, Any], message: str) -> None:
    with pytest.raises(NodeError, match=message):
        render_template(template, variables)


def test_output_limit() -> None:
    assert len(render_template("{{ 'a' * n }}", {"n": MAX_OUTPUT_LENGTH})) == MAX_OUTPUT_LENGTH
    with pytest.raises(NodeError, match="'\\*' would make 400001 characters"):
        render_template("{{ 'a' * n }}", {"n": MAX_OUTPUT_LENGTH + 1})
    # many small pieces: the output is counted while it is produced
    with pytest.raises(NodeError, match="Output length exceeds 400000 characters"):
        render_template("{% for i in range(n) %}{{ 'abcde' }}{% endfor %}", {"n": 80_001})


def test_compiled_templates_are_cached() -> None:
    from fanflow.nodes.template import _compile

    _compile.cache_clear()
    render_template("{{ x }}", {"x": 1})
    render_template("{{ x }}", {"x": 2})
    assert _compile.cache_info().hits == 1


def test_template_variables() -> None:
    data = {
        "variables": [
            {"variable": "a", "value_selector": ["n", "text"]},
            {"variable": "b", "value_selector": ["n", "obj", "k"]},
            {"variable": "c", "value_selector": ["gone", "x"]},
            {"variable": "d", "value_selector": []},
            {"variable": "e", "value_selector": ["n", "none"]},
        ]
    }
    lookup = make_lookup({"n.text": "t", "n.obj": {"k": [1]}, "n.none": None})
    assert template_variables(data, lookup) == {"a": "t", "b": [1], "c": None, "d": None, "e": None}
    assert template_variables({}, lookup) == {}
