"""The DSL loader and validator: real exports load, broken graphs report every problem."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fanflow.dsl.load import check_file, load_workflow, parse_workflow, validate_workflow
from fanflow.errors import Problem, WorkflowInvalid
from fanflow.workflow import DefaultValue, RetryConfig, Workflow

DATA = Path(__file__).resolve().parent / "data" / "dify"
FILES = sorted(p.relative_to(DATA).as_posix() for p in DATA.rglob("*.yml"))

#: Files refused, and why: the unsupported node types, the tool providers fanflow lacks
#: (`tool:<provider>`), or the document-level reason.
REFUSED: dict[str, set[str]] = {
    "dsl/Claude3 Code Translation.yml": {"tool:aws"},
    "dsl/儿童故事播客.yml": {"tool:audio", "tool:comfyui"},
    "dsl/出题组卷.yml": {"tool:feishu_document"},
    "dsl/文章仿写-单图_多图自动搭配.yml": {"tool:本地爬虫", "tool:imageSearch"},
    "dsl/资讯推送应用.yml": {"tool:wecom"},
    # Dify's auto-mock test names a provider that exists only as its mock
    "fixtures/http_request_with_json_tool_workflow.yml": {"tool:builtin"},
    "fixtures/knowledge_retrieval_v2_workflow.yml": {"knowledge-retrieval-v2"},
    "fixtures/search_dify_from_2023_to_2025.yml": {"tool:langgenius/perplexity/perplexity"},
    "fixtures/minimal_not_an_app.yml": {"not an app"},
}
_UNSUPPORTED = re.compile(r"^unsupported node type '([^']+)'$")
_NO_PROVIDER = re.compile(r"^(?:built-in )?tool provider '([^']+)' \((?:tool|provider_type) ")


def test_all_copied_files_are_covered() -> None:
    assert len(FILES) == 73
    assert set(REFUSED) <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_real_file_loads_or_is_refused_for_a_named_reason(name: str) -> None:
    problems = check_file(DATA / name)
    if name not in REFUSED:
        assert problems == []
        return
    reasons = set()
    for problem in problems:
        match = _UNSUPPORTED.match(problem.message)
        if match:
            assert problem.node_id and problem.node_title
            reasons.add(match.group(1))
        elif provider := _NO_PROVIDER.match(problem.message):
            assert problem.node_id and problem.node_title
            reasons.add(f"tool:{provider.group(1)}")
        else:
            assert problem.message.startswith("not a Dify app export"), problem
            reasons.add("not an app")
    assert reasons == REFUSED[name]


def test_real_exports_keep_their_shape() -> None:
    wf = load_workflow(DATA / "dsl" / "文思泉涌.yml")
    assert (wf.mode, wf.version, wf.extra["kind"]) == ("workflow", "0.3.0", "app")
    iteration = next(n for n in wf.nodes.values() if n.type == "iteration")
    body = wf.children[iteration.id]
    assert wf.start_node(iteration.id).type == "iteration-start"
    assert all(wf.nodes[child].parent_id == iteration.id for child in body)
    assert wf.start_node().type == "start"

    chat = load_workflow(DATA / "fixtures" / "test_streaming_conversation_variables.yml")
    assert chat.mode == "advanced-chat"
    assert [(v.name, v.value) for v in chat.conversation] == [("str", "default")]

    unversioned = load_workflow(DATA / "dsl" / "Dify 运营一条龙.yml")  # no kind, no version
    assert unversioned.version == "0.1.0"


def test_graph_documents_load_without_reference_checks() -> None:
    nested = load_workflow(
        DATA / "fixtures" / "graphon_tests" / "graphon_loop_nested_iteration_loop_end.yml"
    )
    assert nested.extra["kind"] == "graph"
    # iteration-start and the loop-end carry both iteration_id and loop_id: the inner wins
    assert nested.nodes["iteration"].parent_id == "loop"
    assert nested.nodes["iteration-start"].parent_id == "iteration"
    assert nested.nodes["stop"].parent_id == "iteration"
    # graphon's own fixtures reference a missing node to test run-time failure
    load_workflow(DATA / "fixtures" / "graphon_tests" / "graphon_loop_condition_error.yml")
    bare = load_workflow(DATA / "fixtures" / "builder_restricted" / "http_default_output.yml")
    assert bare.extra["kind"] == "graph" and bare.name == "http_default_output"
    assert bare.edges[0].id == "start-source-http"


# --- hand-written documents -----------------------------------------------------------------


def _node(node_id: str, node_type: str, title: str | None = None, **data: Any) -> dict:
    return {"id": node_id, "data": {"type": node_type, "title": title or node_id, **data}}


def _edge(source: str, target: str, handle: str | None = None) -> dict:
    edge = {"source": source, "target": target}
    if handle:
        edge["sourceHandle"] = handle
    return edge


START = _node("start", "start", "Start", variables=[{"variable": "text", "type": "text-input"}])


def _end(*selectors: list[str]) -> dict:
    outputs = [{"variable": f"o{i}", "value_selector": s} for i, s in enumerate(selectors)]
    return _node("end", "end", "End", outputs=outputs)


def _doc(nodes: list[dict], edges: list[dict], *, mode: str = "workflow", **wf: Any) -> str:
    document = {
        "version": "0.3.1",
        "kind": "app",
        "app": {"name": "t", "mode": mode},
        "workflow": {"graph": {"nodes": nodes, "edges": edges}, **wf},
    }
    return yaml.safe_dump(document, allow_unicode=True)


def _problems(text: str) -> list[Problem]:
    with pytest.raises(WorkflowInvalid) as caught:
        load_workflow("t.yml", text=text)
    assert caught.value.source == "t.yml"
    return caught.value.problems


def _messages(text: str) -> list[str]:
    return [str(p) for p in _problems(text)]


def _load(text: str) -> Workflow:
    return load_workflow("t.yml", text=text)


def test_all_problems_are_reported_together_with_node_id_and_title() -> None:
    text = _doc(
        [
            START,
            _node("1719000000001", "datasource", "Google Search"),
            _node("it", "iteration", "Each", iterator_selector="start.text", parallel_nums=0),
            _node("it-start", "iteration-start", iteration_id="it"),
            _end(["ghost", "x"], ["env", "nope"]),
        ],
        [
            _edge("start", "1719000000001"),
            _edge("1719000000001", "it"),
            _edge("it", "end"),
            _edge("end", "nowhere"),
        ],
    )
    assert _messages(text) == [
        "unsupported node type 'datasource' at node 1719000000001 (Google Search)",
        "iterator_selector must be a selector like [node_id, name], got 'start.text' "
        "at node it (Each)",
        "parallel_nums must be a positive whole number, got 0 at node it (Each)",
        "edge 'end-source-nowhere' to missing node 'nowhere' at node end (End)",
        "reference 'ghost.x' to missing node 'ghost' at node end (End)",
        "undeclared environment variable 'env.nope' at node end (End)",
    ]


def test_start_node_rules() -> None:
    assert _messages(_doc([_end()], [])) == ["the workflow has no start node"]
    second = _node("start2", "start", "Again", variables=[])
    assert _messages(_doc([START, second, _end()], [_edge("start", "end")])) == [
        "more than one start node (first: start (Start)) at node start2 (Again)"
    ]


def test_edges_from_missing_nodes_and_across_containers() -> None:
    loop = _node("loop", "loop", "Loop", loop_count=2, break_conditions=[])
    inner = _node("inner", "template-transform", "Inner", template="x", loop_id="loop")
    text = _doc(
        [START, loop, _node("ls", "loop-start", loop_id="loop"), inner, _end()],
        [
            _edge("start", "loop"),
            _edge("ls", "inner"),
            _edge("inner", "end"),
            _edge("ghost", "loop"),
            _edge("loop", "end"),
        ],
    )
    assert _messages(text) == [
        "edge 'inner-source-end' to end (End) crosses a container boundary "
        "(loop loop -> top level) at node inner (Inner)",
        "edge 'ghost-source-loop' from missing node 'ghost' at node loop (Loop)",
    ]


def test_cycles_are_refused_at_top_level_and_inside_loops() -> None:
    a = _node("a", "template-transform", "A", template="")
    b = _node("b", "template-transform", "B", template="")
    top = _problems(
        _doc([START, a, b, _end()], [_edge("start", "a"), _edge("a", "b"), _edge("b", "a")])
    )
    assert len(top) == 1 and top[0].message.startswith("cycle in the top level graph")
    assert top[0].node_id in {"a", "b"}

    loop = _node("loop", "loop", "Loop", loop_count=3, break_conditions=[])
    body = [
        _node("ls", "loop-start", loop_id="loop"),
        _node("x", "template-transform", "X", template="", loop_id="loop"),
        _node("y", "template-transform", "Y", template="", loop_id="loop"),
    ]
    edges = [_edge("start", "loop"), _edge("loop", "end"), _edge("ls", "x"), _edge("x", "y")]
    _load(_doc([START, loop, *body, _end()], edges))  # a loop's body may be a plain DAG
    problems = _problems(_doc([START, loop, *body, _end()], [*edges, _edge("y", "x")]))
    assert [p.message.split(":")[0] for p in problems] == ["cycle in the loop loop graph"]


def test_container_without_start_node() -> None:
    it = _node("it", "iteration", "Each", iterator_selector=["start", "text"])
    child = _node("c", "template-transform", "C", template="", iteration_id="it")
    assert _messages(_doc([START, it, child, _end()], [_edge("start", "it")])) == [
        "iteration has no iteration-start node at node it (Each)"
    ]
    legacy = _node("it", "iteration", "Each", iterator_selector=["start", "text"])
    legacy["data"]["start_node_id"] = "c"  # 0.1.x exports point at the first body node
    _load(_doc([START, legacy, child, _end()], [_edge("start", "it")]))


def test_references_must_be_able_to_run_before_the_reader() -> None:
    late = _node("late", "template-transform", "Late", template="")
    early = _node("early", "template-transform", "Early", template="{{#late.output#}}")
    side = _node("side", "template-transform", "Side", template="")
    end = _end(["side", "output"], ["early", "output"], ["end", "o0"])
    text = _doc(
        [START, early, late, side, end],
        [
            _edge("start", "early"),
            _edge("early", "late"),
            _edge("late", "end"),
            _edge("start", "side"),
        ],
    )
    # a parallel branch (side) is not ordered but Dify tolerates it; the rest never resolve
    assert _messages(text) == [
        "reference 'late.output' to late (Late), which never runs before this node "
        "at node early (Early)",
        "reference 'end.o0' to end (End), which never runs before this node at node end (End)",
    ]


def test_references_inside_containers() -> None:
    it = _node(
        "it",
        "iteration",
        "Each",
        iterator_selector=["start", "text"],
        output_selector=["body", "output"],
    )
    body = _node(
        "body",
        "template-transform",
        "Body",
        template="",
        iteration_id="it",
        variables=[
            {"variable": "i", "value_selector": ["it", "item"]},
            {"variable": "n", "value_selector": ["it", "index"]},
            {"variable": "all", "value_selector": ["it", "output"]},
            {"variable": "t", "value_selector": ["start", "text"]},
        ],
    )
    nodes = [START, it, _node("is", "iteration-start", iteration_id="it"), body]
    edges = [_edge("start", "it"), _edge("is", "body"), _edge("it", "end")]
    _load(_doc([*nodes, _end(["it", "output"])], edges))
    problems = _problems(_doc([*nodes, _end(["it", "output"], ["start", "nope"])], edges))
    assert [str(p) for p in problems] == [
        "reference 'start.nope' to undeclared start input 'nope' at node end (End)"
    ]


def test_system_environment_and_conversation_references() -> None:
    end = _end(["sys", "query"], ["sys", "user_id"], ["env", "key"], ["conversation", "memo"])
    env = [{"name": "key", "value_type": "secret", "value": ""}]
    conv = [{"name": "memo", "value_type": "string", "value": "x"}]
    chat = _load(
        _doc(
            [START, end],
            [_edge("start", "end")],
            mode="advanced-chat",
            environment_variables=env,
            conversation_variables=conv,
        )
    )
    assert chat.environment[0].value == "" and chat.environment[0].value_type == "secret"
    assert _messages(_doc([START, end], [_edge("start", "end")])) == [
        "unknown system variable 'sys.query' at node end (End)",
        "undeclared environment variable 'env.key' at node end (End)",
        "undeclared conversation variable 'conversation.memo' at node end (End)",
    ]


BAD_FIELDS = [
    ("iteration", {"iterator_selector": ["start", "text"], "parallel_nums": "many"}, "parallel_nums"),
    ("iteration", {"iterator_selector": "start"}, "iterator_selector must be a selector"),
    ("iteration", {"iterator_selector": ["start", "text"], "error_handle_mode": "x"}, "error_handle_mode"),
    ("if-else", {"cases": "yes"}, "cases must be a list"),
    ("if-else", {"cases": [{"case_id": "a", "conditions": [{"value": 1}]}]}, "variable_selector"),
    ("code", {"code": "", "code_language": "python3", "outputs": ["a"]}, "outputs must be a mapping"),
    ("code", {"code": "", "code_language": "python3", "outputs": {"a": {"type": "int"}}}, "outputs.a.type"),
    ("code", {"code": "", "code_language": "cobol"}, "code_language must be one of"),
    ("end", {"outputs": [{"variable": "x", "value_selector": "start.text"}]}, "outputs[0].value_selector"),
    ("end", {"outputs": {"x": 1}}, "outputs must be a list"),
    ("loop", {"loop_count": "3"}, "loop_count must be a whole number"),
    ("assigner", {"version": "2", "items": [{"operation": "set"}]}, "items[0].variable_selector"),
    ("list-operator", {"variable": None}, "variable must be a selector"),
    ("template-transform", {"template": None}, "template must be text"),
    ("llm", {"prompt_template": []}, "model must be a mapping"),
    ("code", {"code": "", "error_strategy": "retry"}, "error_strategy must be"),
    ("code", {"code": "", "retry_config": {"retry_enabled": True, "max_retries": "x"}}, "retry_config.max_retries"),
    ("code", {"code": "", "default_value": [{"key": "n", "type": "number", "value": "x"}]}, "not valid JSON"),
    ("code", {"code": "", "default_value": [{"key": "o", "type": "object", "value": "[1]"}]}, "is not a object"),
]  # fmt: skip


@pytest.mark.parametrize(("node_type", "data", "expected"), BAD_FIELDS)
def test_bad_field_types_are_reported(node_type: str, data: dict, expected: str) -> None:
    node = _node("n", node_type, "Bad", **data)
    problems = _problems(_doc([START, node, _end()], [_edge("start", "n"), _edge("n", "end")]))
    assert any(expected in p.message for p in problems), problems
    assert all((p.node_id, p.node_title) == ("n", "Bad") for p in problems), problems


def test_node_fields_retry_and_default_values() -> None:
    retry = {"retry_enabled": True, "max_retries": 3, "retry_interval": "1500"}
    defaults = [
        {"key": "text", "type": "string", "value": "[not json]"},
        {"key": "n", "type": "number", "value": "2.5"},
        {"key": "ok", "type": "boolean", "value": "true"},
        {"key": "obj", "type": "object", "value": '{"a": 1}'},
        {"key": "items", "type": "array[string]", "value": '["x"]'},
        {"key": "raw", "type": "array[number]", "value": [1, 2]},
    ]
    nodes = [
        START,
        _node("llm", "llm", "LLM", model={}, prompt_template=[], retry_config=retry),
        _node("off", "code", "Off", code="", retry_config={**retry, "retry_enabled": False}),
        _node(
            "tpl",
            "template-transform",
            "T",
            template="",
            retry_config=retry,
            error_strategy="default-value",
            default_value=defaults,
        ),
        _node("fb", "code", "FB", code="", error_strategy="fail-branch"),
        _end(),
    ]
    wf = _load(_doc(nodes, [_edge("start", n["id"]) for n in nodes[1:]]))
    assert wf.nodes["llm"].retry == RetryConfig(max_retries=3, retry_interval_ms=1500)
    assert wf.nodes["off"].retry.max_retries == 0 and not wf.nodes["off"].retry.enabled
    assert wf.nodes["tpl"].retry == RetryConfig()  # template nodes are never retried
    assert wf.nodes["tpl"].error_strategy == "default-value"
    assert wf.nodes["fb"].error_strategy == "fail-branch"
    assert wf.nodes["llm"].error_strategy is None
    assert wf.nodes["tpl"].default_values == (
        DefaultValue("text", "string", "[not json]"),
        DefaultValue("n", "number", 2.5),
        DefaultValue("ok", "boolean", True),
        DefaultValue("obj", "object", {"a": 1}),
        DefaultValue("items", "array[string]", ["x"]),
        DefaultValue("raw", "array[number]", [1, 2]),
    )


def test_canvas_notes_are_skipped_and_legacy_aggregator_is_kept() -> None:
    note = {"id": "note", "type": "custom-note", "data": {"type": "", "text": "hi"}}
    aggregator = _node("agg", "variable-assigner", "Agg", variables=[["start", "text"]])
    nodes = [START, note, aggregator, _end(["agg", "output"])]
    edges = [_edge("start", "agg"), _edge("agg", "end", handle=None)]
    wf = _load(_doc(nodes, edges))
    assert "note" not in wf.nodes
    assert wf.nodes["agg"].type == "variable-assigner"
    assert wf.edges[0].source_handle == "source" and wf.edges[0].id == "start-source-agg"


def test_document_level_problems() -> None:
    text = _doc([START, _end()], [_edge("start", "end")])
    for version, ok in [("0.6.9", True), ("0.1.0", True), ("0.7.0", False), ("1.0.0", False)]:
        document = yaml.safe_load(text) | {"version": version}
        if ok:
            assert parse_workflow(yaml.safe_dump(document)).version == version
        else:
            assert _messages(yaml.safe_dump(document)) == [
                f"DSL version '{version}' is newer than supported (up to 0.6.x)"
            ]
    no_kind = yaml.safe_load(text)
    del no_kind["kind"], no_kind["version"]
    assert _load(yaml.safe_dump(no_kind)).version == "0.1.0"
    for mode in ("chat", "completion", "agent-chat"):
        chat = yaml.safe_load(text) | {"app": {"name": "c", "mode": mode}}
        assert _messages(yaml.safe_dump(chat)) == [f"app mode '{mode}' is not a workflow"]
    assert _messages("- just\n- a list\n") == [
        "not a Dify app export: the document is not a mapping"
    ]
    assert _messages("kind: rag_pipeline\n")[0].startswith("not a Dify app export")
    assert _messages("key: [unclosed\n")[0].startswith("not valid YAML")


def test_validate_workflow_and_check_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(_doc([START, _end(["start", "text"])], [_edge("start", "end")]))
    assert check_file(good) == []
    assert validate_workflow(load_workflow(good)) == []
    assert check_file(tmp_path / "absent.yml")[0].message.startswith("cannot read file")


def test_bad_parents_and_duplicate_ids() -> None:
    orphan = _node("o", "template-transform", "Orphan", template="", iteration_id="gone")
    misplaced = _node("m", "template-transform", "M", template="", loop_id="start")
    twin = _node("end", "end", "Twin", outputs=[])
    text = _doc([START, orphan, misplaced, _end(), twin], [_edge("start", "end")])
    assert _messages(text) == [
        "duplicate node id at node end (Twin)",
        "container 'gone' does not exist at node o (Orphan)",
        "parent start (Start) is a 'start' node, not an iteration or loop at node m (M)",
    ]


# ---- bounded YAML and size limits (hostile files) ----

from fanflow.dsl import yaml_bounded  # noqa: E402
from fanflow.dsl.limits import DslLimits  # noqa: E402


@pytest.mark.parametrize("name", FILES)
def test_the_bounded_loader_reads_every_export_as_pyyaml_does(name: str) -> None:
    text = (DATA / name).read_text(encoding="utf-8")
    assert yaml_bounded.load_bounded(text) == yaml.safe_load(text)


def _bomb(levels: int, width: int) -> str:
    lines = ["kind: app", "app: {name: bomb, mode: workflow}", 'l0: &l0 ["lol"]']
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        (_bomb(8, 10), "more than 1000000 values once its aliases are expanded"),
        (_bomb(40, 2), "more than 1000000 values once its aliases are expanded"),
        ("a: &a [1, *a]\n", "alias *a refers to itself"),
        ("a: &a {b: {c: *a}}\n", "alias *a refers to itself"),
        ("x: " + "[" * 100_000 + "]" * 100_000, "nested deeper than 100 levels"),
        ("x: " + "{a: " * 5_000 + "1" + "}" * 5_000, "nested deeper than 100 levels"),
        ('app: {name: "\\udc80"}\n', "lone surrogate (\\udc80)"),
    ],
)
def test_hostile_yaml_is_refused_in_milliseconds(text: str, expected: str) -> None:
    started = time.perf_counter()
    with pytest.raises(WorkflowInvalid) as refused:
        load_workflow("hostile.yml", text=text)
    assert time.perf_counter() - started < 2.5
    assert expected in str(refused.value)
    assert "not valid YAML" in str(refused.value)


def test_aliases_within_the_budget_still_load() -> None:
    loaded = yaml_bounded.load_bounded(_bomb(3, 10) + "n: *l3\n")
    assert len(loaded["n"]) == 10 and loaded["n"][0][0][0] == ["lol"]
    with pytest.raises(yaml_bounded.YamlRefused, match="more than 1000 values"):
        yaml_bounded.load_bounded(_bomb(3, 10), max_nodes=1000)


def _graph(nodes: int, edges: int) -> str:
    lines = ["kind: app", "version: 0.1.5", "app: {name: big, mode: workflow}", "workflow:"]
    lines += ["  graph:", "    nodes:"]
    lines += [f"      - {{id: n{i}, data: {{type: start, title: S}}}}" for i in range(nodes)]
    lines.append("    edges:" if edges else "    edges: []")
    lines += [f"      - {{source: n{i}, target: n{i + 1}}}" for i in range(edges)]
    return "\n".join(lines) + "\n"


def test_graph_and_file_sizes_are_refused_before_the_graph_is_built() -> None:
    limits = DslLimits(max_bytes=100_000, max_nodes=10, max_edges=20)
    with pytest.raises(WorkflowInvalid) as refused:
        load_workflow("big.yml", text=_graph(11, 0), limits=limits)
    assert refused.value.problems == [
        Problem("graph.nodes: 11 nodes, over the limit of 10 (FANFLOW_DSL_MAX_NODES)")
    ]
    with pytest.raises(WorkflowInvalid, match=r"graph.edges: 21 edges, over the limit of 20"):
        load_workflow("big.yml", text=_graph(2, 21), limits=limits)
    with pytest.raises(
        WorkflowInvalid, match=r"over the limit of 100000 \(FANFLOW_DSL_MAX_BYTES\)"
    ):
        load_workflow("big.yml", text="# " + "é" * 50_000, limits=limits)
    # a 100,000-node graph is refused while it is parsed: nothing is built
    started = time.perf_counter()
    # (a value budget of 25,000: parsing stops there, long before the document's end)
    with pytest.raises(WorkflowInvalid, match="more than 25000 values"):
        load_workflow(
            "huge.yml",
            text=_graph(100_000, 0),
            limits=DslLimits(max_bytes=10**8, max_values=25_000),
        )
    assert time.perf_counter() - started < 30
    # without limits (stored apps, `fanflow run`) only the YAML bounds apply
    with pytest.raises(WorkflowInvalid) as other:
        load_workflow("big.yml", text=_graph(11, 0))
    assert not any("limit" in str(p) for p in other.value.problems)
