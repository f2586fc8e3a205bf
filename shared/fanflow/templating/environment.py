"""A Jinja2 environment whose renders are bounded in time, size and total allocation.

Templates render in the scheduler's hosts (the trigger's and the aggregator's event loops),
so a hostile template must fail its node in a fraction of a second without growing the
process. `BoundedEnvironment` is Jinja2's `SandboxedEnvironment` (no attribute escapes)
plus bounds enforced *before* anything large is built:

- a deadline, checked on every loop iteration (each `{% for %}` iterable is wrapped at
  parse time), every call, filter, intercepted operator and output chunk;
- a size cap on every value an operator, call or filter makes (`*`, `**`, `+`, `%`, `~`,
  `str.format`, the widening string methods and filters are checked from their arguments,
  so `'a' * 300000000` is refused without allocating); a value's size counts characters of
  strings and, for containers, slots plus their items' sizes, so `[s] * n` is as big as
  the string it repeats;
- an allocation budget: the sizes of all values made during one render, summed, so a loop
  making fresh large strings is stopped long before it matters;
- an output cap, counted while the output is produced.

Every refusal raises `TemplateBoundExceeded`, whose message names the bound.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

from fanflow.templating.checks import (
    CURRENT,
    FILTER_PRECHECKS,
    Budget,
    TemplateBoundExceeded,
    TemplateLimits,
    check_binop,
    check_method,
    check_str_format,
    current_budget,
    int_arg,
    size_of,
)

__all__ = ["BoundedEnvironment", "TemplateBoundExceeded", "TemplateLimits", "render_bounded"]


class BoundedEnvironment(SandboxedEnvironment):
    """`SandboxedEnvironment` with `TemplateLimits` enforced while rendering."""

    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, **options)
        self.filters = {
            name: f if name in _LINEAR_FILTERS else _bounded_filter(name, f)
            for name, f in self.filters.items()
        }
        self.filters[_LOOP_FILTER] = _budgeted_iter
        self.filters[_CONCAT_FILTER] = _concat
        self.filters[_BLOCK_FILTER] = _captured
        self.filters[_SLICE_FILTER] = _captured

    def call_binop(self, context: jinja2.runtime.Context, op: str, left: Any, right: Any) -> Any:
        budget = current_budget()
        budget.tick()
        check_binop(budget, op, left, right)
        result = super().call_binop(context, op, left, right)
        _admit_result(budget, result, f"'{op}'")
        return result

    def call(  # the double underscores keep jinja's own keyword arguments apart
        __self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any
    ) -> Any:
        budget = current_budget()
        budget.tick()
        check_method(budget, __obj, args)
        result = super().call(__context, __obj, *args, **kwargs)
        _admit_result(budget, result, f"{getattr(__obj, '__name__', 'call')}()")
        target = getattr(__obj, "__self__", None)
        if (
            isinstance(target, list | set | dict | bytearray)
            and len(target) > budget.limits.max_size
        ):
            size = len(target)
            target.clear()
            budget.admit(size, f"{getattr(__obj, '__name__', 'method')}()")
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template = value.__self__
        is_map = value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            values = [*args, *kwargs.values()]
            if is_map and args and isinstance(args[0], Mapping):
                values = list(args[0].values())
            check_str_format(current_budget(), template, values)
            return wrapped(*args, **kwargs)

        return checked

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            assert isinstance(loop.iter, nodes.Expr)
            # literal text of the body, written on every iteration (perhaps into a capture)
            literal = sum(len(data.data) for data in loop.find_all(nodes.TemplateData))
            loop.iter = _filter_node(loop.iter, _LOOP_FILTER)
            loop.iter.args.append(nodes.Const(literal, lineno=loop.lineno))
        for assign in tree.find_all(nodes.AssignBlock):
            _check_captured(assign)
        for filtered in tree.find_all(nodes.FilterBlock):
            _check_captured(filtered)
        for item in list(tree.find_all(nodes.Getitem)):
            if isinstance(item.arg, nodes.Slice):  # a slice is a fresh copy
                _replace(tree, item, _filter_node(item, _SLICE_FILTER))
        for concat in list(tree.find_all(nodes.Concat)):
            replacement = _filter_node(nodes.List(concat.nodes), _CONCAT_FILTER)
            _replace(tree, concat, replacement)
        return tree


#: filters whose result is at most about as big as their input, or one of its items: left
#: unwrapped (they cost nothing extra); what they make counts where it is kept (`+`, `*`,
#: `~`, output, a container's append/insert/add/setdefault/extend/update)
_LINEAR_FILTERS = frozenset(
    {"upper", "lower", "title", "capitalize", "trim", "striptags", "truncate", "length",
     "count", "wordcount", "first", "last", "default", "d", "int", "float", "abs", "round",
     "random", "min", "max", "safe"}
)  # fmt: skip
_LOOP_FILTER = "fanflow_budgeted_loop"
_CONCAT_FILTER = "fanflow_bounded_concat"
_BLOCK_FILTER = "fanflow_bounded_block"
_SLICE_FILTER = "fanflow_bounded_slice"


def _check_captured(block: nodes.AssignBlock | nodes.FilterBlock) -> None:
    """`{% set x %}...{% endset %}` and `{% filter %}` capture their body's output, which
    the output count never sees: the captured text goes through `_BLOCK_FILTER` first."""
    check = nodes.Filter(None, _BLOCK_FILTER, [], [], None, None, lineno=block.lineno)
    innermost = block.filter
    if innermost is None:
        block.filter = check
        return
    while innermost.node is not None:
        assert isinstance(innermost.node, nodes.Filter)
        innermost = innermost.node
    innermost.node = check


def _filter_node(node: nodes.Expr, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


def _replace(tree: nodes.Node, old: nodes.Node, new: nodes.Node) -> None:
    """Put `new` where `old` is (`new` may hold `old`: parents are found before any change)."""
    parents = [parent for parent in tree.find_all(nodes.Node) if parent is not new]
    for parent in [tree, *parents]:
        for field, value in parent.iter_fields():
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list):
                for index, item in enumerate(value):
                    if item is old:
                        value[index] = new
                        return


def _admit_result(budget: Budget, result: Any, what: str) -> None:
    if isinstance(result, str | bytes | bytearray | list | tuple | set | frozenset | dict):
        budget.admit(size_of(result, budget.limits.max_size), what)


@jinja2.pass_context
def _budgeted_iter(context: jinja2.runtime.Context, iterable: Any, literal: int) -> Iterator[Any]:
    budget = current_budget()
    for item in iterable:
        budget.tick()
        budget.spend(literal)
        yield item


@jinja2.pass_context
def _concat(context: jinja2.runtime.Context, parts: list[Any]) -> str:
    budget = current_budget()
    budget.tick()
    texts = [_checked_text(part) for part in parts]
    budget.admit(sum(len(t) for t in texts), "'~'")
    return "".join(texts)


@jinja2.pass_context
def _captured(context: jinja2.runtime.Context, text: Any) -> Any:
    budget = current_budget()
    budget.tick()
    budget.admit(size_of(text, budget.limits.max_size), "a captured block or slice")
    return text


@jinja2.pass_context
def _finalize(context: jinja2.runtime.Context, value: Any) -> Any:
    """Checks a value before it is turned into output text."""
    return _checked_text(value)


def _checked_text(value: Any) -> str:
    budget = current_budget()
    budget.tick()
    if isinstance(value, str):
        budget.spend(len(value))  # output text, perhaps kept by a `{% set %}` block
        return value
    budget.admit(size_of(value, budget.limits.max_size), "output of a value")
    return str(value)


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    precheck = FILTER_PRECHECKS.get(name)
    # which leading arguments jinja passes (context, eval context or environment)
    passed = jinja2.utils._PassArg.from_obj(function)

    def checked(function_args: tuple[Any, ...], value: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:  # fmt: skip
        budget = current_budget()
        budget.tick()
        if rest or kwargs:
            for arg in (*rest, *kwargs.values()):
                if int_arg(arg) > budget.limits.max_size:
                    budget.admit(int_arg(arg), f"filter {name!r} argument")
            if precheck is not None:
                precheck(budget, value, rest, kwargs)
        elif precheck is not None:
            precheck(budget, value, rest, kwargs)
        result = function(*function_args, **kwargs)
        if isinstance(result, Iterator | map | filter):
            result = list(_bounded_items(budget, result, name))
        _admit_result(budget, result, f"filter {name!r}")
        return result

    if passed is None:  # pass_context keeps jinja from folding constants at compile time

        @jinja2.pass_context
        def plain(context: jinja2.runtime.Context, value: Any, *rest: Any, **kwargs: Any) -> Any:
            return checked((value, *rest), value, rest, kwargs)

        return functools.update_wrapper(plain, function, assigned=("__name__", "__doc__"))

    @functools.wraps(function)
    def bounded(first: Any, value: Any, *rest: Any, **kwargs: Any) -> Any:
        return checked((first, value, *rest), value, rest, kwargs)

    return bounded


def _bounded_items(budget: Budget, items: Iterator[Any], name: str) -> Iterator[Any]:
    for count, item in enumerate(items, 1):
        if count % 256 == 0:
            budget.tick()
        if count > budget.limits.max_size:
            budget.admit(count, f"filter {name!r}")
        yield item


def render_bounded(
    template: jinja2.Template, variables: Mapping[str, Any], limits: TemplateLimits
) -> str:
    """Render `template` under `limits`, counting the output as it is produced."""
    budget = Budget(limits)
    token = CURRENT.set(budget)
    try:
        parts: list[str] = []
        size = 0
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > limits.max_size:
                raise TemplateBoundExceeded(f"Output length exceeds {limits.max_size} characters")
            budget.tick()
            parts.append(chunk)
        return "".join(parts)
    finally:
        CURRENT.reset(token)
