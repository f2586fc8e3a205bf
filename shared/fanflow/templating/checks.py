"""The bounds of a template render: the budget, value sizes and the pre-checks of operations.

`fanflow.templating.environment` calls these before an operator, call or filter runs, so an
operation that would build something over `TemplateLimits.max_size` is refused from its
arguments alone, without allocating.
"""

from __future__ import annotations

import contextvars
import re
import string
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2.utils import Namespace

Args = tuple[Any, ...]
Kwargs = Mapping[str, Any]


@dataclass(frozen=True)
class TemplateLimits:
    #: seconds one render may take
    seconds: float = 0.5
    #: largest value (and output) one render may make, in characters or container slots
    max_size: int = 400_000
    #: all values made during one render, summed
    allocation_budget: int = 8_000_000
    #: largest integer an operator may make, in bits
    max_int_bits: int = 65_536


class TemplateBoundExceeded(Exception):
    """A render went over one of its `TemplateLimits`; the message names which."""


class Budget:
    __slots__ = ("allocated", "deadline", "limits")

    def __init__(self, limits: TemplateLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.allocated = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateBoundExceeded(
                f"template render time limit exceeded ({self.limits.seconds:g} s)"
            )

    def admit(self, size: int, what: str) -> None:
        """Refuse a value of `size` before (or right after) it is made."""
        if size > self.limits.max_size:
            raise TemplateBoundExceeded(
                f"template value size limit exceeded: {what} would make {size} "
                f"characters or items (limit {self.limits.max_size})"
            )
        self.spend(size)

    def spend(self, size: int) -> None:
        """Count `size` against the allocation budget (output text, captured or not)."""
        self.allocated += size
        if self.allocated > self.limits.allocation_budget:
            raise TemplateBoundExceeded(
                "template allocation budget exceeded: values made by this render total "
                f"over {self.limits.allocation_budget} characters or items"
            )


CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "fanflow_template_budget", default=None
)


def current_budget() -> Budget:
    budget = CURRENT.get()
    if budget is None:  # outside render_bounded (e.g. constant folding): no work allowed
        raise TemplateBoundExceeded("template evaluated outside a bounded render")
    return budget


_TEXTS = (str, bytes, bytearray)
_CONTAINERS = (list, tuple, set, frozenset, dict)
_SIZED = frozenset({*_TEXTS, *_CONTAINERS})


def size_of(value: Any, limit: int) -> int:
    """Characters of a string, slots plus items' sizes of a container; stops past `limit`."""
    if isinstance(value, _TEXTS):
        return len(value)
    if isinstance(value, _CONTAINERS):
        total = len(value)
        items: Iterable[Any] = value
        if isinstance(value, dict):
            items = (x for pair in value.items() for x in pair)
        sized = _SIZED
        for item in items:
            if type(item) in sized or isinstance(item, _TEXTS + _CONTAINERS):
                total += size_of(item, limit - total)
                if total > limit:
                    break
        return total
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3  # about its decimal digits
    if isinstance(value, Namespace):  # `namespace(...)`: the values it holds
        return 1 + size_of(dict(value._Namespace__attrs), limit)
    return 1


def int_arg(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


_SPEC_NUMBER = re.compile(r"\d+")
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _estimate_format(budget: Budget, fields: list[str], literal: int, args: Iterable[Any]) -> int:
    """Upper bound of a formatted string: each field may print the biggest argument."""
    limit = budget.limits.max_size
    widest = max((size_of(a, limit) for a in args), default=0) + 32
    total = literal
    for spec in fields:
        if "*" in spec or "{" in spec:
            raise TemplateBoundExceeded(
                "template format specs with '*' or nested fields are not allowed"
            )
        total += widest + sum(int(n) for n in _SPEC_NUMBER.findall(spec) if len(n) < 12)
        total += sum(limit + 1 for n in _SPEC_NUMBER.findall(spec) if len(n) >= 12)
        if total > limit:
            break
    return total


def _check_percent(budget: Budget, template: str, args: Any) -> None:
    specs = [m.group(0) for m in _PERCENT_SPEC.finditer(template)]
    values = list(args.values()) if isinstance(args, Mapping) else args
    values = values if isinstance(values, tuple | list) else [values]
    budget.admit(_estimate_format(budget, specs, len(template), values), "'%' formatting")


def check_str_format(budget: Budget, template: str, args: Iterable[Any]) -> None:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return  # str.format raises the same error itself
    specs = [spec or "" for _, name, spec, _ in parsed if name is not None]
    literal = sum(len(text) for text, *_ in parsed)
    budget.admit(_estimate_format(budget, specs, literal, args), "str.format")


def check_binop(budget: Budget, op: str, left: Any, right: Any) -> None:
    limits = budget.limits
    if op == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, str | bytes | list | tuple) and isinstance(count, int):
                budget.admit(size_of(seq, limits.max_size) * max(count, 0), "'*'")
                return
        if isinstance(left, int) and isinstance(right, int):
            _check_bits(limits, abs(left).bit_length() + abs(right).bit_length(), "'*'")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0:
            _check_bits(limits, max(abs(left).bit_length() - 1, 1) * right, "'**'")
    elif op == "+":
        if isinstance(left, str | bytes | list | tuple) and type(left) is type(right):
            size = size_of(left, limits.max_size) + size_of(right, limits.max_size)
            budget.admit(size, "'+'")
    elif op == "%" and isinstance(left, str):
        _check_percent(budget, left, right)


def _check_bits(limits: TemplateLimits, bits: int, what: str) -> None:
    if bits > limits.max_int_bits:
        raise TemplateBoundExceeded(
            f"template integer size limit exceeded: {what} would make a {bits}-bit "
            f"integer (limit {limits.max_int_bits} bits)"
        )


def check_method(budget: Budget, obj: Any, args: tuple[Any, ...]) -> None:
    """Pre-check the string and container methods that can build more than they take."""
    target = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    limit = budget.limits.max_size
    if isinstance(target, str | bytes):
        what = f"str.{name}()"
        if name in ("center", "ljust", "rjust", "zfill") and args:
            budget.admit(max(int_arg(args[0]), len(target)), what)
        elif name == "expandtabs":
            tab = int_arg(args[0]) if args else 8
            tabs = target.count("\t") if isinstance(target, str) else target.count(b"\t")
            budget.admit(len(target) + tabs * tab, what)
        elif name == "replace" and len(args) >= 2:
            budget.admit(_replaced_size(target, args[0], args[1], args[2:]), what)
        elif name == "join" and args:
            budget.admit(_joined_size(target, args[0], limit), what)
        elif name == "translate" and args and isinstance(args[0], Mapping):
            widest = max((size_of(v, limit) for v in args[0].values()), default=1)
            budget.admit(len(target) * max(widest, 1), what)
    elif (
        isinstance(target, list | set | dict | bytearray)
        and name in ("extend", "update")
        and args
        and hasattr(args[0], "__len__")
    ):
        budget.admit(len(target) + len(args[0]), f"{name}()")
    if isinstance(target, list | set | dict | bytearray) and name in _KEEPERS:
        # what a container keeps is counted: a value made by an unchecked filter is kept here
        budget.spend(sum(size_of(arg, limit) for arg in args))


#: container methods that keep their arguments
_KEEPERS = frozenset({"append", "insert", "add", "setdefault", "extend", "update"})


def _replaced_size(target: Any, old: Any, new: Any, rest: tuple[Any, ...]) -> int:
    if not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return len(target)
    try:
        hits = target.count(old) if old else len(target) + 1
    except TypeError:
        return len(target)
    if rest and isinstance(rest[0], int) and rest[0] >= 0:
        hits = min(hits, rest[0])
    return len(target) + hits * len(new)


def _joined_size(separator: Any, items: Any, limit: int) -> int:
    if not isinstance(items, list | tuple | set | frozenset | dict | str):
        return 0  # an iterator: its items are checked when the result is admitted
    return size_of(items, limit) + max(len(items) - 1, 0) * len(separator)


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str, default: Any) -> Any:
    return args[0] if args else kwargs.get(name, default)


def _precheck_center(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> None:
    width = int_arg(_argument(args, kwargs, "width", 80))
    budget.admit(max(width, len(str(value))), "filter 'center'")


def _precheck_indent(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> None:
    width = _argument(args, kwargs, "width", 4)
    prefix = len(width) if isinstance(width, str) else int_arg(width)
    text = str(value)
    budget.admit(len(text) + (text.count("\n") + 1) * prefix, "filter 'indent'")


def _precheck_replace(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> None:
    if len(args) >= 2:
        budget.admit(_replaced_size(str(value), args[0], args[1], args[2:]), "filter 'replace'")


def _precheck_format(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> None:
    _check_percent(budget, str(value), kwargs or args)


def _precheck_join(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> None:
    separator = _argument(args, kwargs, "d", "")
    separator = separator if isinstance(separator, str) else ""
    budget.admit(_joined_size(separator, value, budget.limits.max_size), "filter 'join'")


def _precheck_sum(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> None:
    budget.admit(size_of(value, budget.limits.max_size), "filter 'sum'")


FILTER_PRECHECKS: dict[str, Callable[[Budget, Any, Args, Kwargs], None]] = {
    "center": _precheck_center,
    "indent": _precheck_indent,
    "replace": _precheck_replace,
    "format": _precheck_format,
    "join": _precheck_join,
    "sum": _precheck_sum,
}
