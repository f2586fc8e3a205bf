"""Template-transform rendering."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from pathlib import Path
from typing import Any

import pytest

from fanflow.errors import NodeError
from fanflow.nodes import render_template, template_variables
from fanflow.nodes.template import MAX_OUTPUT_LENGTH
from fanflow.templating.environment import TemplateLimits
from tests.trigger.conftest import StartServer, bearer, start_server

from .conftest import make_lookup

__all__ = ["start_server"]  # the trigger fixture, used below


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


# ---- hostile templates: each fails its node fast, naming the bound, without growing ----

NESTED_RANGE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
BIG_STRING = "{{ ('a' * n) | length }}"


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _refused(template: str, variables: dict[str, Any], message: str) -> tuple[float, float]:
    """(seconds, RSS growth in MB) of a render that must fail with `message`."""
    gc.collect()
    before = _rss_mb()
    started = time.monotonic()
    with pytest.raises(NodeError, match=message) as caught:
        render_template(template, variables)
    elapsed = time.monotonic() - started
    assert caught.value.error_type == "TemplateRenderError"
    return elapsed, _rss_mb() - before


def test_nested_range_loops_stop_at_the_time_limit() -> None:
    elapsed, grown = _refused(NESTED_RANGE, {}, r"render time limit exceeded \(0.5 s\)")
    assert 0.4 < elapsed < 2.0
    assert grown < 50


def test_a_huge_string_is_refused_before_it_is_made() -> None:
    elapsed, grown = _refused(BIG_STRING, {"n": 300_000_000}, "'\\*' would make 300000000")
    assert elapsed < 2.0
    assert grown < 50


S = "a" * 20_000


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ (n * 'a') | length }}", "'\\*' would make 300000000"),
        ("{{ [s] * 1000 }}", "'\\*' would make 20001000"),  # a list as big as what it repeats
        ("{{ 2 ** n }}", "integer size limit exceeded: '\\*\\*'"),
        (
            "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}"
            "{% endfor %}",
            "integer size limit exceeded: '\\*'",
        ),
        (
            "{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
            "{% endfor %}",
            "'~' would make 524288",
        ),
        (
            "{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
            "{% endfor %}",
            "'\\+' would make 524288",
        ),
        ("{{ 'a' | center(n) }}", "filter 'center' argument would make 300000000"),
        ("{{ 'a'.center(n) }}", "str.center\\(\\) would make 300000000"),
        ("{{ 'a'.ljust(n) }}", "str.ljust\\(\\) would make 300000000"),
        ("{{ '{:>300000000}'.format(1) }}", "str.format would make"),
        ("{{ ('{0}' * 100000).format(s) }}", "str.format would make"),
        ("{{ '%0300000000d' % 1 }}", "'%' formatting would make"),
        ("{{ '%0300000000d' | format(1) }}", "'%' formatting would make"),
        ("{{ s.replace('a', s) }}", "str.replace\\(\\) would make 400020000"),
        ("{{ s | replace('a', s) }}", "filter 'replace' would make 400020000"),
        ("{{ ('\n' * 300000) | indent(width=1000) }}", "filter 'indent' would make"),
        ("{{ ('\t' * 100000).expandtabs(100000) }}", "str.expandtabs\\(\\) would make"),
        ("{{ s.translate({97: s}) }}", "str.translate\\(\\) would make"),
        (
            "{% set xs = [1] %}{% for i in range(40) %}{{ xs.extend(xs) }}{% endfor %}",
            "extend\\(\\) would make 524288",
        ),
        ("{{ [1] | slice(100000000) | list }}", "filter 'slice' argument"),
        ("{% for i in range(100000) %}{% set x = s ~ i %}{% endfor %}", "allocation budget"),
        ("{% for i in range(100000) %}{{ s }}{% endfor %}", "Output length exceeds 400000"),
        (
            "{% set ns = namespace(s='a') %}{% for i in range(30) %}"
            "{% set ns.s %}{{ ns.s }}{{ ns.s }}{% endset %}{% endfor %}",
            "a captured block or slice would make 524288",
        ),
        (  # captured output never reaches the output count: it is budgeted as written
            "{% set x %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endset %}",
            "allocation budget",
        ),
        (
            "{% filter upper %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endfilter %}",
            "allocation budget",
        ),
        (
            "{% set x %}{% for i in range(100000) %}" + "L" * 20_000 + "{% endfor %}{% endset %}",
            "allocation budget",
        ),
        (  # slices are fresh copies: kept in a list they add up
            "{% set xs = [] %}{% for i in range(20000) %}{{ xs.append(s[i % 2:]) }}{% endfor %}",
            "allocation budget",
        ),
        (  # values made by unchecked filters count where they are kept
            "{% set xs = [] %}{% for i in range(20000) %}{{ xs.append(s|upper) }}{% endfor %}",
            "allocation budget",
        ),
        (
            "{% set xs = [] %}{% for i in range(20000) %}"
            "{{ xs.append(namespace(v=s|lower)) }}{% endfor %}",
            "allocation budget",
        ),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursion too deep"),
        ("{% for x in [1] recursive %}{{ loop([1, 1]) }}{% endfor %}", "recursion too deep"),
        (
            "{% for i in range(100000) %}{{ range(100000) | list | length }}{% endfor %}",
            "render time limit exceeded",
        ),
    ],
)
def test_hostile_templates_fail_fast_naming_the_bound(template: str, message: str) -> None:
    elapsed, grown = _refused(template, {"n": 300_000_000, "s": S}, message)
    assert elapsed < 2.0
    assert grown < 50


def test_templates_within_the_bounds_still_render() -> None:
    assert render_template("{{ 'ab' * 3 }}|{{ 2 ** 10 }}|{{ '%05d' % 42 }}", {}) == (
        "ababab|1024|00042"
    )
    assert render_template("{{ '{:>6}'.format('x') }}|{{ 'x'.center(5) }}|", {}) == "     x|  x  |"
    assert render_template("{{ [1, 2] + [3] }}|{{ 'a' ~ 1 ~ none }}", {}) == "[1, 2, 3]|a1None"
    big = render_template("{% for i in range(1000) %}{{ s[:300] }}{% endfor %}", {"s": S})
    assert len(big) == 300_000
    assert render_template("{{ xs | map('upper') | join(',') }}", {"xs": ["a", "b"]}) == "A,B"
    assert render_template("{% set xs = [] %}{{ xs.append(1) }}{{ xs }}", {}) == "None[1]"
    captured = "{% set x %}ab{% endset %}{{ x }}|{% set y | upper | lower %}Ab{% endset %}{{ y }}|"
    assert render_template(captured + "{% filter upper %}cd{% endfilter %}", {}) == "ab|ab|CD"


def test_the_limits_are_configurable() -> None:
    from fanflow.nodes.template import configure_limits, current_limits

    default = current_limits()
    try:
        configure_limits(TemplateLimits(seconds=0.1, max_size=1000))
        _refused(NESTED_RANGE, {}, r"render time limit exceeded \(0.1 s\)")
        _refused("{{ 'a' * 1001 }}", {}, "limit 1000")
    finally:
        configure_limits(default)


HOSTILE_APP = """\
kind: app
version: 0.1.5
app: {name: hostile-template, mode: workflow}
workflow:
  graph:
    nodes:
      - id: s
        data: {type: start, title: Start, variables: [{variable: n, label: N, type: number, required: true}]}
      - id: t
        data:
          type: template-transform
          title: Loops
          template: "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}"
          variables: [{variable: n, value_selector: [s, n]}]
      - id: e
        data: {type: end, title: End, outputs: [{variable: out, value_selector: [t, output]}]}
    edges:
      - {source: s, target: t}
      - {source: t, target: e}
"""


async def test_healthz_of_a_trigger_answers_while_hostile_templates_render(
    start_server: StartServer, tmp_path: Path
) -> None:
    """The trigger renders template-transform inline, on its event loop: unbounded, these
    loops would hold it for hours. Bounded, each run fails its node at the time limit and
    `/healthz` answers between them."""
    server = await start_server()
    document = tmp_path / "hostile.yml"
    document.write_text(HOSTILE_APP)
    key = await server.import_app(document)
    outcomes: list[tuple[float, dict[str, Any]]] = []

    async def run_hostile() -> None:
        for _ in range(3):
            started = time.perf_counter()
            response = await server.http.post(
                "/v1/workflows/run",
                json={"inputs": {"n": 100_000}, "response_mode": "blocking", "user": "u"},
                headers=bearer(key),
            )
            assert response.status_code == 200, response.text
            outcomes.append((time.perf_counter() - started, response.json()["data"]))

    busy = asyncio.create_task(run_hostile())
    timings: list[float] = []
    while not busy.done():
        started = time.perf_counter()
        assert (await server.http.get("/healthz")).status_code == 200
        timings.append(time.perf_counter() - started)
        await asyncio.sleep(0.02)
    await busy
    for elapsed, data in outcomes:
        assert data["status"] == "failed", data
        assert "render time limit exceeded" in data["error"], data
        assert elapsed < 2.0, outcomes
    assert len(timings) >= 3
    assert max(timings) < 1.5, [round(t * 1000) for t in timings]


def test_limits_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from fanflow.settings import Settings

    monkeypatch.setenv("FANFLOW_TEMPLATE_RENDER_S", "0.25")
    monkeypatch.setenv("FANFLOW_TEMPLATE_ALLOCATION_BUDGET", "1000000")
    limits = Settings().template_limits()
    assert limits == TemplateLimits(seconds=0.25, allocation_budget=1_000_000)
    assert Settings.model_fields["template_render_s"].default == TemplateLimits().seconds
