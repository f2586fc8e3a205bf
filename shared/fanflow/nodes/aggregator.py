"""Variable aggregator (legacy type name `variable-assigner`): the first variable that exists.

As in Dify, "exists" means the selector resolves, even to null: a variable set to null by
a branch that ran wins over a later one. Only variables of nodes that did not run (or of
missing paths) are passed over. When none exists the output key is absent, not null.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fanflow.variables import Lookup

_MISSING = object()


def aggregate(data: Mapping[str, Any], lookup: Lookup) -> dict[str, Any]:
    """`{"output": v}`, or with groups enabled `{group_name: {"output": v}}`."""
    settings = data.get("advanced_settings") or {}
    if not settings.get("group_enabled"):
        value = _first_existing(data.get("variables") or [], lookup)
        return {} if value is _MISSING else {"output": value}
    outputs: dict[str, Any] = {}
    for group in settings.get("groups") or []:
        value = _first_existing(group.get("variables") or [], lookup)
        if value is not _MISSING:
            outputs[str(group.get("group_name"))] = {"output": value}
    return outputs


def _first_existing(selectors: Sequence[Sequence[str]], lookup: Lookup) -> Any:
    for selector in selectors:
        if len(selector) < 2:
            continue
        try:
            return lookup(list(selector))
        except KeyError:
            continue
    return _MISSING
