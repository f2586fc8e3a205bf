"""Request JSON read safely: nesting bounded before parsing, text checked before storing.

`json.loads` recurses once per nesting level, and so do pydantic and the state encoder
after it: a body nested 100,000 levels deep must be refused before any of them sees it.
`nesting_error` finds the first place a body passes `MAX_JSON_DEPTH` with one linear scan
of its tokens (strings skipped whole), naming the field it is in.

Every string of a parsed body (keys too) must be storable text: a lone surrogate
(`"\\ud800"`) cannot be encoded as UTF-8 and a NUL cannot be stored by PostgreSQL;
`text_error` names the first field holding either.
"""

from __future__ import annotations

import re
from typing import Any

#: the deepest nesting of arrays and objects a request body may have (the body itself is 1)
MAX_JSON_DEPTH = 64

# a JSON string (escapes included) or one structural character; numbers and literals are
# skipped, they cannot nest. Possessive quantifiers keep the scan linear.
_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{},:]')
_OPENERS = frozenset(b"[{")
_SHOWN_PARTS = 6


def _path(parts: list[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text = f"{text or 'body'}[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "body"


def nesting_error(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why `raw` nests too deep (naming where), or None. Malformed JSON is left to the parser."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return None  # cannot pass the limit: skip the scan
    # per open container: "[" with the index of the current element, or "{" with its key
    stack: list[list[Any]] = []
    pending_key: str | None = None
    for match in _TOKENS.finditer(raw):
        token = match.group()
        first = token[0]
        if first in _OPENERS:
            if len(stack) >= max_depth:
                parts = [part for _, part in stack if part is not None]
                # the field it is in, not 64 levels of indexes
                where = _path(parts[:_SHOWN_PARTS]) + ("..." if len(parts) > _SHOWN_PARTS else "")
                return f"{where}: nested deeper than {max_depth} levels of arrays and objects"
            stack.append([b"[", 0] if first == ord("[") else [b"{", None])
        elif first == ord("]") or first == ord("}"):
            if stack:
                stack.pop()
        elif first == ord(","):
            if stack and stack[-1][0] == b"[":
                stack[-1][1] += 1
        elif first == ord(":"):
            if stack and stack[-1][0] == b"{":
                stack[-1][1] = pending_key
        else:  # a string: remember it in case it is a key
            pending_key = _key_text(token)
    return None


def _key_text(token: bytes) -> str:
    inner = token[1:-1]
    text = inner.decode("utf-8", "replace")
    return text if len(text) <= 64 else text[:61] + "..."


def text_error(value: Any, *, where: str = "") -> str | None:
    """Why a parsed JSON value holds a string that cannot be stored (naming the field), or
    None. Iterative: the value's depth is bounded already, but this needs no stack."""
    todo: list[tuple[Any, list[str | int]]] = [(value, [where] if where else [])]
    while todo:
        item, path = todo.pop()
        if isinstance(item, str):
            problem = _bad_text(item)
            if problem:
                return f"{_path(path)}: {problem}"
        elif isinstance(item, dict):
            for key, child in item.items():
                problem = _bad_text(key)
                if problem:
                    return f"{_path(path)}: a key {problem}"
                todo.append((child, [*path, key]))
        elif isinstance(item, list):
            todo.extend((child, [*path, index]) for index, child in enumerate(item))
    return None


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        return f"contains a lone surrogate (\\u{code:04x}), which is not valid Unicode text"
    return None


def storable(text: str) -> bool:
    """Whether `text` can be stored or looked up (no NUL, no lone surrogate)."""
    return _bad_text(text) is None
