"""JSON on the busy paths: orjson, with the standard library's leniency.

What orjson refuses is read by `json`, and every lone surrogate is read as U+FFFD (docs/design.md).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """The value of a JSON document. Raises ValueError if it is not one."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return scrub(json.loads(data))  # raises json.JSONDecodeError or UnicodeDecodeError, both ValueErrors
    except RecursionError:  # the standard library recurses once per level of nesting
        raise ValueError("not JSON that can be read: nested too deeply") from None


def dumps(value: Any) -> bytes:
    """Compact JSON in UTF-8. Raises TypeError for a value JSON cannot hold."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return orjson.dumps(scrub(value))  # a lone surrogate; anything else fails again


def scrub(value: Any) -> Any:
    """`value` with every lone surrogate in its strings (keys included) made U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    if isinstance(value, dict):
        return {scrub(key): scrub(item) for key, item in value.items()}
    return value
