"""YAML loading with bounds: alias bombs, recursive anchors and deep nesting are refused.

PyYAML's safe loader shares an aliased node instead of copying it, so an 8-level alias
bomb of 1.5 KB loads in an instant as a few objects — and expands to 10^8 values in
whatever walks it next (validation, JSON encoding). A recursive anchor (`&a [*a]`) loads as
a list holding itself, and a document nested 100,000 levels deep exhausts the recursion of
the composer. This loader counts, while composing, how many nodes the document holds once
every alias is expanded, and refuses it past `MAX_YAML_NODES`; it refuses an alias to an
anchor still being composed, nesting past `MAX_YAML_DEPTH`, and strings that are not valid
Unicode text (a lone surrogate written as an escape). Each refusal is one `YamlRefused`
naming the line; a bomb is refused after composing its small text, in milliseconds.

Events come from libyaml's parser when PyYAML has it (fast), else from the pure-Python one.
"""

from __future__ import annotations

from typing import Any, cast

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, ScalarEvent, SequenceStartEvent
from yaml.nodes import Node
from yaml.resolver import Resolver

__all__ = ["MAX_YAML_DEPTH", "MAX_YAML_NODES", "YamlRefused", "load_bounded"]

#: nodes (scalars, sequences, mappings) a document may hold with every alias expanded;
#: the largest Dify export seen holds ~4,000
MAX_YAML_NODES = 1_000_000
#: nesting of sequences and mappings (Dify exports nest ~13 deep)
MAX_YAML_DEPTH = 100


class YamlRefused(yaml.YAMLError):
    """The document is refused before it is built: too large expanded, recursive, too deep,
    or holding invalid text."""


def _event_source() -> Any:
    parser = getattr(yaml, "CParser", None)  # libyaml's, when PyYAML was built with it
    if parser is not None:
        return parser
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _PurePython(Reader, Scanner, Parser):
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)

    return _PurePython


_Events: Any = _event_source()


class _BoundedComposer(Composer):
    """PyYAML's composer, counting and checking as it goes (see the module docstring)."""

    def __init__(self, *, max_nodes: int, max_depth: int) -> None:
        super().__init__()
        self._max_nodes = max_nodes
        self._max_depth = max_depth
        self._nodes = 0  # composed so far, aliases counted expanded
        self._depth = 0
        self._sizes: dict[str, int] = {}  # anchor -> expanded node count of its node
        self._open: set[str] = set()  # anchors whose nodes are being composed

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()  # type: ignore[attr-defined]
        where = f"line {event.start_mark.line + 1}"
        if isinstance(event, AliasEvent):
            if event.anchor in self._open:
                raise YamlRefused(f"{where}: alias *{event.anchor} refers to itself")
            self._count(self._sizes.get(str(event.anchor), 1), where)
            return cast(Node, super().compose_node(parent, index))
        if isinstance(event, ScalarEvent):
            problem = _text_problem(event.value)
            if problem:
                raise YamlRefused(f"{where}: {problem}")
        anchor = event.anchor
        before = self._nodes
        self._count(1, where)
        nests = isinstance(event, SequenceStartEvent | MappingStartEvent)
        if nests:
            self._depth += 1
            if self._depth > self._max_depth:
                raise YamlRefused(f"{where}: nested deeper than {self._max_depth} levels")
        if anchor is not None:
            self._open.add(anchor)
        try:
            node = cast(Node, super().compose_node(parent, index))
        finally:
            if nests:
                self._depth -= 1
            if anchor is not None:
                self._open.discard(anchor)
        if anchor is not None:
            self._sizes[anchor] = self._nodes - before
        return node

    def _count(self, nodes: int, where: str) -> None:
        self._nodes += nodes
        if self._nodes > self._max_nodes:
            raise YamlRefused(
                f"{where}: the document holds more than {self._max_nodes} values once its "
                "aliases are expanded (an alias bomb, or a graph too large; "
                "FANFLOW_DSL_MAX_VALUES)"
            )


def _text_problem(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        return f"a string contains a lone surrogate (\\u{code:04x}), not valid Unicode text"
    return None


class _BoundedLoader(_BoundedComposer, _Events, SafeConstructor, Resolver):  # type: ignore[misc]
    def __init__(self, stream: str, *, max_nodes: int, max_depth: int) -> None:
        _Events.__init__(self, stream)
        _BoundedComposer.__init__(self, max_nodes=max_nodes, max_depth=max_depth)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)


def load_bounded(
    text: str, *, max_nodes: int = MAX_YAML_NODES, max_depth: int = MAX_YAML_DEPTH
) -> Any:
    """`yaml.safe_load(text)` within the bounds; raises `YamlRefused` (a `yaml.YAMLError`)
    past them, and `yaml.YAMLError` for malformed YAML."""
    loader = _BoundedLoader(text, max_nodes=max_nodes, max_depth=max_depth)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
