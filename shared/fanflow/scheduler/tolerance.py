"""`fanflow: {tolerated_failure_percentage, tolerated_failure_count}` on an iteration.

As Step Functions' Distributed Map tolerates failed items: an iteration in Dify's
`terminated` error mode fails at its first failed item; with a tolerance it goes on and
succeeds with the failed items recorded (their outputs are null), until the failures cross
the threshold. Then it fails and its pending items are not dispatched. Both limits may be
given: crossing either fails the iteration. A percentage is of the iteration's item count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COUNT_KEY = "tolerated_failure_count"
PERCENTAGE_KEY = "tolerated_failure_percentage"


@dataclass(frozen=True)
class Tolerance:
    count: int | None = None
    percentage: float | None = None

    def allowed(self, items: int) -> int:
        """How many of `items` may fail before the iteration fails."""
        limits: list[int] = []
        if self.count is not None:
            limits.append(self.count)
        if self.percentage is not None:
            # 5 % of 100 items tolerates 5 failed items; of 30 items, 1 (1.5 rounded down)
            limits.append(int(items * self.percentage / 100 + 1e-9))
        return min(limits)


def _extension(data: Mapping[str, Any]) -> Mapping[str, Any]:
    extension = data.get("fanflow")
    return extension if isinstance(extension, Mapping) else {}


def tolerance_of(data: Mapping[str, Any]) -> Tolerance | None:
    """The iteration's tolerance, or None (Dify's behaviour). Bad values are refused at
    validate (`problems`); here they count as absent."""
    extension = _extension(data)
    count, percentage = extension.get(COUNT_KEY), extension.get(PERCENTAGE_KEY)
    if problems(data) or (count is None and percentage is None):
        return None
    return Tolerance(
        count=None if count is None else int(count),
        percentage=None if percentage is None else float(percentage),
    )


def problems(data: Mapping[str, Any]) -> list[str]:
    """What is wrong with the tolerance fields of an iteration's `data` (empty: fine)."""
    extension = _extension(data)
    found: list[str] = []
    count = extension.get(COUNT_KEY)
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        found.append(f"fanflow.{COUNT_KEY} must be a whole number >= 0, got {count!r}")
    percentage = extension.get(PERCENTAGE_KEY)
    if percentage is not None and (
        not isinstance(percentage, int | float)
        or isinstance(percentage, bool)
        or not 0 <= percentage <= 100
    ):
        found.append(f"fanflow.{PERCENTAGE_KEY} must be a number from 0 to 100, got {percentage!r}")
    mode = data.get("error_handle_mode") or "terminated"
    if (count is not None or percentage is not None) and mode != "terminated":
        found.append(
            f"fanflow.{COUNT_KEY}/{PERCENTAGE_KEY} need error_handle_mode 'terminated' "
            f"(the default), got {mode!r}: {mode} already tolerates every failure"
        )
    return found
