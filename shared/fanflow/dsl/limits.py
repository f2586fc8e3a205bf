"""Size limits of a workflow document, checked before its graph is built.

A 100,000-node graph took minutes and a gigabyte to validate: the file's size and its
graph's node and edge counts are checked first, each refusal naming the limit and the
setting that raises it. `fanflow.settings.Settings.dsl_limits()` builds the deployment's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fanflow.errors import Problem

__all__ = ["DEFAULT_DSL_LIMITS", "DslLimits"]


@dataclass(frozen=True)
class DslLimits:
    #: the document's size in UTF-8 bytes (FANFLOW_DSL_MAX_BYTES)
    max_bytes: int = 10 * 1024 * 1024
    #: nodes of the graph, container children and notes included (FANFLOW_DSL_MAX_NODES)
    max_nodes: int = 2_000
    #: edges of the graph (FANFLOW_DSL_MAX_EDGES)
    max_edges: int = 10_000
    #: values (scalars, lists, mappings) in the YAML document with its aliases expanded,
    #: counted while parsing: a huge graph is refused before it is all read
    #: (FANFLOW_DSL_MAX_VALUES; the largest Dify export seen holds ~4,000)
    max_values: int = 250_000

    def text_problem(self, text: str) -> Problem | None:
        """Why the document is too large, or None."""
        # a character takes at most 4 bytes: only count bytes when it could matter
        if len(text) * 4 > self.max_bytes:
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > self.max_bytes:
                return Problem(
                    f"the workflow file is {size} bytes, over the limit of {self.max_bytes} "
                    "(FANFLOW_DSL_MAX_BYTES)"
                )
        return None

    def graph_problems(self, graph: Mapping[str, Any]) -> list[Problem]:
        """Why the graph has too many nodes or edges (empty when it fits)."""
        problems = []
        for field, limit, setting in (
            ("nodes", self.max_nodes, "FANFLOW_DSL_MAX_NODES"),
            ("edges", self.max_edges, "FANFLOW_DSL_MAX_EDGES"),
        ):
            entries = graph.get(field)
            if isinstance(entries, list) and len(entries) > limit:
                problems.append(
                    Problem(
                        f"graph.{field}: {len(entries)} {field}, over the limit of {limit} "
                        f"({setting})"
                    )
                )
        return problems


DEFAULT_DSL_LIMITS = DslLimits()
