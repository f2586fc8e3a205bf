"""Files as plain values: Dify's file mapping (`File.to_dict()`) and its named attributes.

A file travels through fanflow as the mapping Dify serialises it to, recognisable by
`dify_model_identity == "__dify__file__"`. If-else sub-conditions and the list operator
read attributes by the names Dify's UI offers (`name`, `type`, `size`, ...), which do not
all match the mapping's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FILE_IDENTITY = "__dify__file__"

#: Attribute name (as the DSL spells it) -> keys to try in the file mapping.
_ATTRIBUTE_KEYS: Mapping[str, tuple[str, ...]] = {
    "name": ("filename", "name"),
    "type": ("type",),
    "size": ("size",),
    "mime_type": ("mime_type",),
    "transfer_method": ("transfer_method",),
    "url": ("url", "remote_url"),
    "extension": ("extension",),
    "related_id": ("related_id",),
}
FILE_ATTRIBUTES = frozenset(_ATTRIBUTE_KEYS)


def is_file(value: Any) -> bool:
    """True for a file mapping."""
    return isinstance(value, Mapping) and value.get("dify_model_identity") == FILE_IDENTITY


def file_attribute(file: Mapping[str, Any], attribute: str) -> Any:
    """A file's attribute by its DSL name; None when the file does not carry it.

    `size` defaults to -1 as in Dify. Raises KeyError for a name that is not a file
    attribute.
    """
    keys = _ATTRIBUTE_KEYS[attribute]
    for key in keys:
        if file.get(key) is not None:
            return file[key]
    return -1 if attribute == "size" else None


def item_attribute(item: Any, key: str) -> Any:
    """`key` of one array element: a file attribute for files, else the object's entry."""
    if is_file(item) and key in FILE_ATTRIBUTES:
        return file_attribute(item, key)
    if isinstance(item, Mapping):
        return item.get(key)
    return None
