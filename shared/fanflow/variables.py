"""Variable references: selectors (`[node_id, var, *path]`) and `{{#node_id.var.path#}}` text.

A `Lookup` resolves a selector to its value or raises `KeyError` when the variable does not
exist. Every pure node evaluator takes one; the scheduler builds it from run state, a worker
from the values a task carries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

Selector = tuple[str, ...]
Lookup = Callable[[Sequence[str]], Any]

#: System, environment and conversation selectors start with these instead of a node id.
RESERVED_PREFIXES = frozenset({"sys", "env", "conversation"})

# Dify's shape: a node id (or sys/env/conversation), then 1-10 identifier segments;
# anything else (digit-first, hyphens, CJK) stays literal text
_REFERENCE = re.compile(r"\{\{#([a-zA-Z0-9_]{1,50}(?:\.[a-zA-Z_][a-zA-Z0-9_]{0,29}){1,10})#\}\}")


def iter_references(text: str) -> Iterator[Selector]:
    """Yield the selector of every `{{#...#}}` reference in `text`, in order."""
    for match in _REFERENCE.finditer(text or ""):
        yield tuple(match.group(1).split("."))


def resolve_or_none(lookup: Lookup, selector: Sequence[str]) -> Any:
    """Resolve a selector; a missing variable reads as None (as Dify's nodes see it)."""
    try:
        return lookup(selector)
    except KeyError:
        return None


def to_text(value: Any) -> str:
    """How a value reads when spliced into text (Dify's segment `text`).

    None and empty arrays read as nothing; objects as JSON; other arrays and booleans as
    Python prints them, as Dify does.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list) and not value:
        return ""
    return str(value)


def to_markdown(value: Any) -> str:
    """How a value reads in an Answer node (Dify's segment `markdown`)."""
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, indent=2)
    if isinstance(value, list):
        return "\n".join(f"- {item}" for item in value)
    return to_text(value)


def render(text: str, lookup: Lookup, *, markdown: bool = False) -> str:
    """Replace every `{{#node.var#}}` in `text` with the text of its value.

    A variable that does not exist reads as its dotted name (`node.var`), as in Dify; one
    that exists with no value reads as nothing.
    """
    convert = to_markdown if markdown else to_text

    def replace(match: re.Match[str]) -> str:
        try:
            return convert(lookup(match.group(1).split(".")))
        except KeyError:
            return match.group(1)

    return _REFERENCE.sub(replace, text or "")


def walk_path(value: Any, path: Sequence[str]) -> Any:
    """Index into objects (and lists by number) along `path`; KeyError when absent."""
    for segment in path:
        if isinstance(value, dict):
            if segment not in value:
                raise KeyError(segment)
            value = value[segment]
        elif isinstance(value, list) and segment.lstrip("-").isdigit():
            try:
                value = value[int(segment)]
            except IndexError as exc:
                raise KeyError(segment) from exc
        else:
            raise KeyError(segment)
    return value


def selector_key(selector: Sequence[str]) -> str:
    return ".".join(selector)


def _looks_like_selector(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(part, str) and part for part in value)
    )


def referenced_selectors(data: Any) -> list[Selector]:
    """Every selector a node's `data` reads: `*selector*` lists and `{{#...#}}` in strings.

    Order of first appearance, without duplicates.
    """
    found: dict[Selector, None] = {}

    def visit(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(v, str(k))
        elif isinstance(value, list):
            if "selector" in key and _looks_like_selector(value):
                found.setdefault(tuple(value), None)
                return
            for item in value:
                visit(item, key)
        elif isinstance(value, str):
            for selector in iter_references(value):
                found.setdefault(selector, None)

    visit(data)
    return list(found)
