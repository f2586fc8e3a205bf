"""Question classification: the prompt, and mapping the model's answer to a class.

The model gets the text, the categories (`category_id`, `category_name`) and the author's
instruction as one JSON document, and answers with a JSON object naming its choice. As
in Dify, an answer object lacking `category_id` or `category_name`, or naming an unknown
id, picks the first class; a reply with no JSON object at all is a `format` failure
(Dify fails the node; fanflow makes it retryable).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fanflow.llm.structured import find_object

_THINK = re.compile(r"<think[^>]*>.*?</think>", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Category:
    id: str
    name: str
    label: str


_SYSTEM = """\
You are a text classifier. The user sends a JSON document with the text to classify \
(`input_text`), the categories to choose from (`categories`, each with a `category_id` \
and a `category_name`) and optional `classification_instructions`. Pick exactly one \
category: the one that fits the text best, following the instructions.
Reply with one JSON object and nothing else, copying the chosen category's id and name \
exactly: {"category_id": "...", "category_name": "..."}"""

_EXAMPLE = {
    "input_text": ["My parcel arrived with the box torn open and a cup broken."],
    "categories": [
        {"category_id": "c-billing", "category_name": "Billing question"},
        {"category_id": "c-damage", "category_name": "Damaged delivery"},
        {"category_id": "c-other", "category_name": "Something else"},
    ],
    "classification_instructions": [],
}
_EXAMPLE_ANSWER = {"category_id": "c-damage", "category_name": "Damaged delivery"}


def classifier_messages(
    query: str, categories: list[Category], instruction: str, *, chat: bool
) -> list[dict[str, Any]]:
    document = json.dumps(
        {
            "input_text": [query],
            "categories": [{"category_id": c.id, "category_name": c.name} for c in categories],
            "classification_instructions": [instruction] if instruction else [],
        },
        ensure_ascii=False,
    )
    if not chat:  # completion model: one prompt
        return [{"role": "user", "content": f"{_SYSTEM}\n\n{document}\n\nAnswer:"}]
    return [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": json.dumps(_EXAMPLE)},
        {"role": "assistant", "content": json.dumps(_EXAMPLE_ANSWER)},
        {"role": "user", "content": document},
    ]


def choose(categories: list[Category], reply: str) -> Category | None:
    """The class the reply names (the first class for an unusable choice); None: no JSON."""
    answer = find_object(_THINK.sub("", reply))
    if answer is None:
        return None
    if "category_id" not in answer or "category_name" not in answer:
        return categories[0]
    chosen = str(answer["category_id"])
    return next((c for c in categories if c.id == chosen), categories[0])


def categories_of(classes: Any, render_name: Any) -> list[Category]:
    """`classes: [{id, name, label?}]` with names rendered; labels default to `CLASS n`."""
    found = []
    for index, item in enumerate(classes if isinstance(classes, list) else []):
        if not isinstance(item, Mapping) or item.get("id") in (None, ""):
            continue
        found.append(
            Category(
                id=str(item["id"]),
                name=render_name(str(item.get("name") or "")),
                label=str(item.get("label") or f"CLASS {index + 1}"),
            )
        )
    return found
