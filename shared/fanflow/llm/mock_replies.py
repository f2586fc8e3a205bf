"""What `fanflow mock-llm` answers: reply rules, schema-built JSON, tool calls, classifier
picks, and the OpenAI-shaped completion around them. Same request, same answer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml


class ReplyOptions(Protocol):
    """The options answers depend on (`fanflow.llm.mock_server.MockOptions`)."""

    @property
    def mode(self) -> str: ...
    @property
    def reply(self) -> str: ...
    @property
    def replies(self) -> tuple[Mapping[str, Any], ...]: ...


def load_replies(path: Path) -> tuple[dict[str, Any], ...]:
    """A replies file (JSON or YAML): a list of rules, or `{model or node id: reply}`."""
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(loaded, Mapping):
        rules = []
        for key, reply in loaded.items():
            reply = {"text": reply} if isinstance(reply, str) else dict(reply)
            rules.append({"key": str(key), **reply})
        return tuple(rules)
    if isinstance(loaded, list) and all(isinstance(rule, Mapping) for rule in loaded):
        return tuple(dict(rule) for rule in loaded)
    raise ValueError(f"{path}: expected a list of rules or a mapping of model → reply")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _content(message: Any) -> str:
    content = message.get("content") if isinstance(message, Mapping) else None
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, Mapping))
    return content if isinstance(content, str) else ""


def _last_user(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _content(message)
    return ""


def build_reply(
    body: Mapping[str, Any], node_id: str | None, options: ReplyOptions
) -> dict[str, Any]:
    """`{text}`, `{tool_call: {name, arguments}}` or `{error, status}` for one request."""
    messages = body.get("messages") or []
    last_user = _last_user(messages)
    seed = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    for rule in options.replies:
        if _matches(rule, body, node_id, last_user):
            return _rule_reply(rule)
    tools = body.get("tools") or []
    if tools and body.get("tool_choice") != "none":
        function = _chosen_tool(tools, body.get("tool_choice"))
        arguments = sample(function.get("parameters") or {}, seed)
        return {"tool_call": {"name": function.get("name") or "tool", "arguments": arguments}}
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping):
        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
            return {"text": json.dumps(sample(schema, seed), ensure_ascii=False)}
        if response_format.get("type") == "json_object":
            return {"text": json.dumps({"reply": f"mock-{_digest(seed)[:16]}"})}
    classified = _classify(last_user)
    if classified is not None:
        return {"text": json.dumps(classified, ensure_ascii=False)}
    if options.mode == "echo":
        return {"text": last_user}
    if options.mode == "fixed":
        return {"text": options.reply}
    return {"text": f"mock-{_digest(last_user or seed)[:16]}"}


def _matches(
    rule: Mapping[str, Any], body: Mapping[str, Any], node_id: str | None, text: str
) -> bool:
    if "key" in rule and rule["key"] not in (node_id, body.get("model")):
        return False
    if "model" in rule and rule["model"] != body.get("model"):
        return False
    if "node" in rule and rule["node"] != node_id:
        return False
    return "contains" not in rule or str(rule["contains"]) in text


def _rule_reply(rule: Mapping[str, Any]) -> dict[str, Any]:
    if rule.get("error"):
        return {"error": rule["error"], "status": rule.get("status", 500)}
    if rule.get("tool_call"):
        return {"tool_call": dict(rule["tool_call"]), "text": str(rule.get("text") or "")}
    if "json" in rule:
        return {"text": json.dumps(rule["json"], ensure_ascii=False)}
    return {"text": str(rule.get("text") or "")}


def _chosen_tool(tools: list[Any], tool_choice: Any) -> Mapping[str, Any]:
    functions = [t.get("function") or {} for t in tools if isinstance(t, Mapping)]
    if isinstance(tool_choice, Mapping):
        wanted = (tool_choice.get("function") or {}).get("name")
        for function in functions:
            if function.get("name") == wanted:
                return function
    return functions[0] if functions else {}


def _classify(text: str) -> dict[str, Any] | None:
    """Answer a classifier document (fanflow's and Dify's both carry these keys)."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        document, _ = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return None
    if not isinstance(document, dict) or "input_text" not in document:
        return None
    categories = [c for c in document.get("categories") or [] if isinstance(c, Mapping)]
    if not categories:
        return None
    subject = json.dumps(document["input_text"], ensure_ascii=False).lower()
    chosen = next(
        (c for c in categories if str(c.get("category_name") or "").lower() in subject),
        categories[int(_digest(subject)[:8], 16) % len(categories)],
    )
    return {"category_id": chosen.get("category_id"), "category_name": chosen.get("category_name")}


def sample(schema: Any, seed: str) -> Any:
    """A value following the usual parts of a JSON schema, the same for the same seed."""
    if not isinstance(schema, Mapping):
        return None
    digest = int(_digest(seed)[:12], 16)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][digest % len(schema["enum"])]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(combinator), list) and schema[combinator]:
            return sample(schema[combinator][0], seed)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        return {name: sample(sub, f"{seed}/{name}") for name, sub in properties.items()}
    if kind == "array":
        return [sample(schema.get("items") or {"type": "string"}, f"{seed}/{i}") for i in range(2)]
    if kind == "integer":
        return digest % 100
    if kind == "number":
        return digest % 10_000 / 100
    if kind == "boolean":
        return digest % 2 == 0
    if kind == "null":
        return None
    return f"mock-{_digest(seed)[:8]}"


def _words(text: str) -> int:
    return len(text.split())


def completion_payload(body: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    """The chat completion carrying `reply` (usage in words)."""
    text = str(reply.get("text") or "")
    message: dict[str, Any] = {"role": "assistant", "content": text}
    finish_reason = "stop"
    completion_tokens = _words(text)
    call = reply.get("tool_call")
    if call:
        arguments = call.get("arguments", {})
        arguments = (
            arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        )
        message["tool_calls"] = [
            {
                "id": f"call_{_digest(arguments)[:12]}",
                "type": "function",
                "function": {"name": call.get("name") or "tool", "arguments": arguments},
            }
        ]
        message["content"] = text or None
        finish_reason = "tool_calls"
        completion_tokens += _words(arguments)
    prompt_tokens = sum(_words(_content(m)) for m in body.get("messages") or [])
    return {
        "id": f"chatcmpl-{_digest(json.dumps(body, sort_keys=True, ensure_ascii=False))[:24]}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body.get("model") or "mock",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
