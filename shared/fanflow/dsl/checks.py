"""Per-node-type checks of the fields the engine reads from `node.data`, no more.

`fanflow.dsl.validate` calls `check_node_fields` for each node of a supported type and puts the
node's id and title on every message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fanflow.registry import node_type
from fanflow.scheduler import tolerance
from fanflow.workflow import Node

#: the `check_*` functions are named by `fanflow.registry`
__all__ = ["active_data", "check_node_fields"]

#: settings Dify reads only when `enabled`: a disabled one's selectors are not references
_SWITCHED_SETTINGS = ("context", "vision")

_Problems = list[str]
_CODE_OUTPUT_TYPES = frozenset(
    {"string", "number", "boolean", "object"}
    | {f"array[{t}]" for t in ("string", "number", "object", "boolean")}
)


def check_node_fields(node: Node) -> list[str]:
    """What is wrong with the fields the engine reads from `node.data` (empty: fine)."""
    problems: _Problems = []
    declared = node_type(node.type)
    if declared is not None and declared.check is not None:
        declared.check(node.data, problems)
    return problems


def active_data(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """`data` without the disabled `context` and `vision` settings (Dify ignores them, so a
    selector left in one that names a deleted node is no reference)."""
    disabled = [
        key
        for key in _SWITCHED_SETTINGS
        if isinstance(data.get(key), Mapping) and data[key].get("enabled") is False
    ]
    if not disabled:
        return data
    return {key: value for key, value in data.items() if key not in disabled}


def is_selector(value: Any) -> bool:
    """A selector: `[node_id, name, ...]`, two or more non-empty strings."""
    return (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(part, str) and part for part in value)
    )


def _need_selector(data: Mapping[str, Any], field: str, problems: _Problems) -> None:
    if not is_selector(data.get(field)):
        problems.append(f"{field} must be a selector like [node_id, name], got {data.get(field)!r}")


def _need_text(data: Mapping[str, Any], field: str, problems: _Problems) -> None:
    if not isinstance(data.get(field), str):
        problems.append(f"{field} must be text, got {data.get(field)!r}")


def _need_choice(
    data: Mapping[str, Any], field: str, choices: tuple[Any, ...], problems: _Problems
) -> None:
    """`field` absent or null means the default; otherwise it must be one of `choices`."""
    value = data.get(field)
    if value is not None and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        problems.append(f"{field} must be one of {allowed}, got {value!r}")


def _entries(data: Mapping[str, Any], field: str, problems: _Problems) -> list[Mapping[str, Any]]:
    """The mappings of list field `field` (absent: none); anything else is reported."""
    value = data.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{field} must be a list, got {type(value).__name__}")
        return []
    good = [item for item in value if isinstance(item, Mapping)]
    if len(good) != len(value):
        problems.append(f"{field} must hold mappings only")
    return good


def _check_bindings(data: Mapping[str, Any], problems: _Problems, field: str = "variables") -> None:
    for i, item in enumerate(_entries(data, field, problems)):
        where = f"{field}[{i}]"
        if not isinstance(item.get("variable"), str) or not item["variable"]:
            problems.append(f"{where}.variable must be a name, got {item.get('variable')!r}")
        if not is_selector(item.get("value_selector")):
            problems.append(
                f"{where}.value_selector must be a selector, got {item.get('value_selector')!r}"
            )


def _check_conditions(conditions: list[Mapping[str, Any]], where: str, problems: _Problems) -> None:
    for i, condition in enumerate(conditions):
        if not is_selector(condition.get("variable_selector")):
            problems.append(f"{where}[{i}].variable_selector must be a selector")
        if not isinstance(condition.get("comparison_operator"), str):
            problems.append(f"{where}[{i}].comparison_operator must be text")


def check_start(data: Mapping[str, Any], problems: _Problems) -> None:
    names = [item.get("variable") for item in _entries(data, "variables", problems)]
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            problems.append(f"variables[{i}].variable must be a name, got {name!r}")
        elif names.index(name) != i:
            problems.append(f"start input {name!r} is declared twice")


def check_end(data: Mapping[str, Any], problems: _Problems) -> None:
    _check_bindings(data, problems, "outputs")


def check_code(data: Mapping[str, Any], problems: _Problems) -> None:
    _need_choice(data, "code_language", ("python3", "javascript"), problems)
    _need_text(data, "code", problems)
    _check_bindings(data, problems)
    outputs = data.get("outputs")
    if outputs is None:
        return
    if not isinstance(outputs, Mapping):
        problems.append(
            f"outputs must be a mapping of name to {{type}}, got {type(outputs).__name__}"
        )
        return
    for name, spec in outputs.items():
        kind = spec.get("type") if isinstance(spec, Mapping) else None
        if kind not in _CODE_OUTPUT_TYPES:
            problems.append(
                f"outputs.{name}.type must be one of {sorted(_CODE_OUTPUT_TYPES)}, got {kind!r}"
            )


def check_template(data: Mapping[str, Any], problems: _Problems) -> None:
    _need_text(data, "template", problems)
    _check_bindings(data, problems)


def check_answer(data: Mapping[str, Any], problems: _Problems) -> None:
    _need_text(data, "answer", problems)


def check_if_else(data: Mapping[str, Any], problems: _Problems) -> None:
    if data.get("cases") is None:  # legacy single case "true"
        _need_choice(data, "logical_operator", ("and", "or"), problems)
        _check_conditions(_entries(data, "conditions", problems), "conditions", problems)
        return
    for i, case in enumerate(_entries(data, "cases", problems)):
        if not isinstance(case.get("case_id"), str) or not case["case_id"]:
            problems.append(f"cases[{i}].case_id must be text, got {case.get('case_id')!r}")
        _need_choice(case, "logical_operator", ("and", "or"), problems)
        _check_conditions(
            _entries(case, "conditions", problems), f"cases[{i}].conditions", problems
        )


def check_iteration(data: Mapping[str, Any], problems: _Problems) -> None:
    _need_selector(data, "iterator_selector", problems)
    if data.get("output_selector") not in (None, []):
        _need_selector(data, "output_selector", problems)
    parallel_nums = data.get("parallel_nums")
    if parallel_nums is not None and (
        not isinstance(parallel_nums, int) or isinstance(parallel_nums, bool) or parallel_nums < 1
    ):
        problems.append(f"parallel_nums must be a positive whole number, got {parallel_nums!r}")
    _need_choice(data, "is_parallel", (True, False), problems)
    _need_choice(data, "flatten_output", (True, False), problems)
    modes = ("terminated", "continue-on-error", "remove-abnormal-output")
    _need_choice(data, "error_handle_mode", modes, problems)
    problems.extend(tolerance.problems(data))


def check_loop(data: Mapping[str, Any], problems: _Problems) -> None:
    count = data.get("loop_count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        problems.append(f"loop_count must be a whole number >= 0, got {count!r}")
    _need_choice(data, "logical_operator", ("and", "or"), problems)
    _check_conditions(_entries(data, "break_conditions", problems), "break_conditions", problems)
    for i, item in enumerate(_entries(data, "loop_variables", problems)):
        if not isinstance(item.get("label"), str) or not item["label"]:
            problems.append(f"loop_variables[{i}].label must be a name, got {item.get('label')!r}")
        _need_choice(item, "value_type", ("constant", "variable"), problems)
        if item.get("value_type") == "variable" and not is_selector(item.get("value")):
            problems.append(
                f"loop_variables[{i}].value must be a selector, got {item.get('value')!r}"
            )


def check_aggregator(data: Mapping[str, Any], problems: _Problems) -> None:
    lists = [("variables", data.get("variables"))]
    settings = data.get("advanced_settings")
    if isinstance(settings, Mapping) and settings.get("group_enabled"):
        for i, group in enumerate(_entries(settings, "groups", problems)):
            lists.append((f"advanced_settings.groups[{i}].variables", group.get("variables")))
    for where, selectors in lists:
        if selectors is not None and (
            not isinstance(selectors, list) or not all(is_selector(s) for s in selectors)
        ):
            problems.append(f"{where} must be a list of selectors, got {selectors!r}")


def check_assigner(data: Mapping[str, Any], problems: _Problems) -> None:
    if str(data.get("version") or "1") != "2":
        _need_selector(data, "assigned_variable_selector", problems)
        _need_choice(data, "write_mode", ("over-write", "append", "clear"), problems)
        if data.get("write_mode") != "clear":
            _need_selector(data, "input_variable_selector", problems)
        return
    for i, item in enumerate(_entries(data, "items", problems)):
        if not is_selector(item.get("variable_selector")):
            problems.append(f"items[{i}].variable_selector must be a selector")
        if not isinstance(item.get("operation"), str):
            problems.append(f"items[{i}].operation must be text, got {item.get('operation')!r}")
        needs_input = item.get("operation") not in ("clear", "remove-first", "remove-last")
        if (
            needs_input
            and item.get("input_type") == "variable"
            and not is_selector(item.get("value"))
        ):
            problems.append(f"items[{i}].value must be a selector, got {item.get('value')!r}")


def check_list_operator(data: Mapping[str, Any], problems: _Problems) -> None:
    _need_selector(data, "variable", problems)


def check_http(data: Mapping[str, Any], problems: _Problems) -> None:
    _need_text(data, "method", problems)
    _need_text(data, "url", problems)


def check_llm(data: Mapping[str, Any], problems: _Problems) -> None:
    if not isinstance(data.get("model"), Mapping):
        problems.append("model must be a mapping {provider, name, ...}")
    if not isinstance(data.get("prompt_template"), list | Mapping):
        problems.append("prompt_template must be a list of messages or one {text}")


def check_parameter_extractor(data: Mapping[str, Any], problems: _Problems) -> None:
    _need_selector(data, "query", problems)
    _entries(data, "parameters", problems)


def check_question_classifier(data: Mapping[str, Any], problems: _Problems) -> None:
    _need_selector(data, "query_variable_selector", problems)
    for i, item in enumerate(_entries(data, "classes", problems)):
        if item.get("id") in (None, ""):
            problems.append(f"classes[{i}].id is missing")
