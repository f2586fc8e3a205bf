"""Checks on a code node's result against its declared `outputs`, with Dify's limits.

Follows Dify's code node result transformation: every declared output present, nothing
undeclared, types checked, null allowed for any output, NUL bytes stripped from declared
strings, booleans in number outputs turned into 0/1. Kept as Dify has them: a `boolean`
output is not type-checked, `array[number]` elements are neither range-checked nor
allowed to be null, and values inside an object without declared `children` are checked
for limits only (their NUL bytes stay).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fanflow.errors import NodeError


@dataclass(frozen=True)
class CodeLimits:
    """Dify's CODE_* settings, with its defaults."""

    max_string_length: int = 400_000
    max_number: int | float = 9_223_372_036_854_775_807
    min_number: int | float = -9_223_372_036_854_775_807
    max_precision: int = 20
    max_depth: int = 5
    max_number_array_length: int = 1_000
    max_string_array_length: int = 30
    max_object_array_length: int = 30


DEFAULT_LIMITS = CodeLimits()


def check_code_outputs(
    outputs: Any,
    declared: Mapping[str, Mapping[str, Any]],
    *,
    node_label: str,
    limits: CodeLimits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """The checked (and normalised) outputs; NodeError naming the output otherwise.

    `error_type` is Dify's: OutputValidationError, DepthLimitError, or CodeNodeError for
    undeclared outputs.
    """
    checker = _Checker(limits, node_label)
    if not isinstance(outputs, dict):
        raise checker.fail(f"the code must return a dict, got {_type_name(outputs)}")
    return checker.object(outputs, declared or {}, prefix="", depth=1)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Checker:
    def __init__(self, limits: CodeLimits, node_label: str) -> None:
        self.limits = limits
        self.node_label = node_label

    def fail(self, message: str, error_type: str = "OutputValidationError") -> NodeError:
        return NodeError(f"{self.node_label}: {message}", error_type=error_type)

    # --- objects ---------------------------------------------------------------------

    def object(
        self, result: dict[str, Any], schema: Mapping[str, Any] | None, *, prefix: str, depth: int
    ) -> dict[str, Any]:
        if depth > self.limits.max_depth:
            raise self.fail(
                f"Depth limit {self.limits.max_depth} reached at '{prefix or 'result'}', "
                "object too deep",
                "DepthLimitError",
            )
        if schema is None:
            for name, value in result.items():
                self.untyped(value, _path(prefix, name), depth)
            return result
        checked: dict[str, Any] = {}
        for name, spec in schema.items():
            path = _path(prefix, name)
            if name not in result:
                raise self.fail(f"Output '{path}' is missing")
            checked[name] = self.typed(result[name], spec or {}, path, depth)
        extra = [name for name in result if name not in schema]
        if extra:
            where = f" in '{prefix}'" if prefix else ""
            raise self.fail(
                f"undeclared output(s){where}: {', '.join(map(repr, extra))}; "
                "declare them or remove them from the result",
                "CodeNodeError",
            )
        return checked

    def typed(self, value: Any, spec: Mapping[str, Any], path: str, depth: int) -> Any:
        kind = spec.get("type")
        children = spec.get("children")
        if kind == "boolean":
            return value  # Dify does not check booleans
        if value is None:
            return None
        if kind == "string":
            if not isinstance(value, str):
                raise self.fail(f"Output '{path}' must be a string, got {_type_name(value)}")
            return self.string(value, path)
        if kind == "number":
            if not isinstance(value, int | float):
                raise self.fail(f"Output '{path}' must be a number, got {_type_name(value)}")
            return int(value) if isinstance(value, bool) else self.number(value, path)
        if kind == "object":
            if not isinstance(value, dict):
                raise self.fail(f"Output '{path}' must be an object, got {_type_name(value)}")
            return self.object(value, children, prefix=path, depth=depth + 1)
        if kind in _ARRAY_CHECKS:
            if not isinstance(value, list):
                raise self.fail(f"Output '{path}' must be an array, got {_type_name(value)}")
            return _ARRAY_CHECKS[kind](self, value, children, path, depth)
        raise self.fail(f"Output '{path}' has unsupported type {kind!r}")

    # --- arrays ----------------------------------------------------------------------

    def _length(self, value: list[Any], path: str, limit: int) -> None:
        if len(value) > limit:
            raise self.fail(
                f"Output '{path}' has {len(value)} elements; it must have at most {limit}"
            )

    def number_array(self, value: list[Any], _children: Any, path: str, _depth: int) -> list[Any]:
        self._length(value, path, self.limits.max_number_array_length)
        for i, item in enumerate(value):
            if not isinstance(item, int | float):
                raise self.fail(f"Output '{path}[{i}]' must be a number, got {_type_name(item)}")
        return [int(item) if isinstance(item, bool) else item for item in value]

    def string_array(self, value: list[Any], _children: Any, path: str, _depth: int) -> list[Any]:
        self._length(value, path, self.limits.max_string_array_length)
        checked: list[Any] = []
        for i, item in enumerate(value):
            if item is not None and not isinstance(item, str):
                raise self.fail(f"Output '{path}[{i}]' must be a string, got {_type_name(item)}")
            checked.append(None if item is None else self.string(item, f"{path}[{i}]"))
        return checked

    def object_array(self, value: list[Any], children: Any, path: str, depth: int) -> list[Any]:
        self._length(value, path, self.limits.max_object_array_length)
        for i, item in enumerate(value):
            if item is not None and not isinstance(item, dict):
                raise self.fail(f"Output '{path}[{i}]' must be an object, got {_type_name(item)}")
        return [
            None
            if item is None
            else self.object(item, children, prefix=f"{path}[{i}]", depth=depth + 1)
            for i, item in enumerate(value)
        ]

    def boolean_array(self, value: list[Any], _children: Any, path: str, _depth: int) -> list[Any]:
        for i, item in enumerate(value):
            if item is not None and not isinstance(item, bool):
                raise self.fail(f"Output '{path}[{i}]' must be a boolean, got {_type_name(item)}")
        return value

    # --- values without a declared type ----------------------------------------------

    def untyped(self, value: Any, path: str, depth: int) -> None:
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, dict):
            self.object(value, None, prefix=path, depth=depth + 1)
        elif isinstance(value, int | float):
            self.number(value, path)
        elif isinstance(value, str):
            self.string(value, path)
        elif isinstance(value, list):
            self.untyped_list(value, path, depth)
        else:
            raise self.fail(f"Output '{path}' has a value of unsupported type {_type_name(value)}")

    def untyped_list(self, value: list[Any], path: str, depth: int) -> None:
        if not value or value[0] is None:
            return  # Dify checks nothing when the first element is null
        first = value[0]
        for kinds in ((int, float), (str,), (dict,), (list,)):
            if isinstance(first, kinds) and all(v is None or isinstance(v, kinds) for v in value):
                break
        else:
            raise self.fail(
                f"Output '{path}' mixes element types; all elements must be of one type"
            )
        for i, item in enumerate(value):
            item_path = f"{path}[{i}]"
            if item is None or isinstance(item, bool):
                continue
            if isinstance(item, list):
                raise self.fail(
                    f"Output '{item_path}' is an array inside an array, which is not supported"
                )
            if isinstance(item, dict):
                self.object(item, None, prefix=item_path, depth=depth + 1)
            elif isinstance(item, str):
                self.string(item, item_path)
            else:
                self.number(item, item_path)

    # --- scalars ---------------------------------------------------------------------

    def string(self, value: str, path: str) -> str:
        if len(value) > self.limits.max_string_length:
            raise self.fail(
                f"Output '{path}' is {len(value)} characters long; "
                f"it must be at most {self.limits.max_string_length}"
            )
        return value.replace("\x00", "")

    def number(self, value: int | float, path: str) -> int | float:
        if value > self.limits.max_number or value < self.limits.min_number:
            raise self.fail(
                f"Output '{path}' is out of range; it must be between "
                f"{self.limits.min_number} and {self.limits.max_number}"
            )
        if isinstance(value, float):
            exponent = Decimal(str(value)).normalize().as_tuple().exponent
            precision = -exponent if isinstance(exponent, int) and exponent < 0 else 0
            if precision > self.limits.max_precision:
                raise self.fail(
                    f"Output '{path}' has {precision} decimal digits; "
                    f"at most {self.limits.max_precision} are allowed"
                )
        return value


_ARRAY_CHECKS = {
    "array[number]": _Checker.number_array,
    "array[string]": _Checker.string_array,
    "array[object]": _Checker.object_array,
    "array[boolean]": _Checker.boolean_array,
}
