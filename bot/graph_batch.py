"""The Graph API's batch requests on the wire: each call's entry, form-encoded, and a batch read back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._*")
_FORM_BYTES = ["+" if b == 0x20 else chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256)]


# What a form field's value must escape to read back the same (the separators, the escape, the space); any
# other printable ASCII character stands for itself in application/x-www-form-urlencoded.
_FORM_SPECIALS = (("%", "%25"), ("&", "%26"), ("+", "%2B"), ("=", "%3D"), ("#", "%23"), (" ", "+"))


def form_quote(text: str) -> str:
    """`text` encoded for an application/x-www-form-urlencoded body; any form parser reads back `text`.

    A batch request's form is long (its JSON holds every call), so the common case, printable ASCII, takes
    six passes of str.replace in C; anything else is escaped byte by byte as urllib's quote_plus does (in C
    too, with str.translate: quote_plus walks the bytes in Python).
    """
    if text.isascii() and text.isprintable():
        for special, escaped in _FORM_SPECIALS:
            text = text.replace(special, escaped)
        return text
    return text.encode().decode("latin-1").translate(_FORM_BYTES)


class Encoded:
    """A JSON value encoded once for every call that sends it: a message that many customers get alike."""

    __slots__ = ("form", "value")

    def __init__(self, value: object) -> None:
        self.value = value
        self.form = form_quote(_compact_json(value))


_compact_json = json.JSONEncoder(separators=(",", ":")).encode


def _form_value(value: object) -> str:
    """A POST field's value in a batch entry: text as it is, anything else as JSON, form-quoted."""
    if isinstance(value, Encoded):
        return value.form
    return form_quote(value if isinstance(value, str) else _compact_json(value))


def plain(body: Mapping[str, object]) -> dict[str, object]:
    """A body with its encoded values back as plain values, for a request that sends it as JSON."""
    return {key: value.value if isinstance(value, Encoded) else value for key, value in body.items()}


def batch_entry(
    method: str, path: str, params: Mapping[str, str] | None, body: Mapping[str, object] | None
) -> dict[str, str]:
    """A call as an entry of a batch request: a relative URL, and a POST's fields form-encoded."""
    entry = {"method": method, "relative_url": path}
    if params:
        entry["relative_url"] += "?" + urlencode(params)
    if body is not None:
        entry["body"] = "&".join(f"{key}={_form_value(value)}" for key, value in body.items())
    return entry


@dataclass(frozen=True)
class BatchEntry:
    """A call read back from a batch request (the fakes of the platform use this)."""

    method: str
    path: str
    params: dict[str, str]
    body: dict[str, object]  # each field's JSON value, or its text when it is not JSON


def read_batch(form: dict[str, str]) -> list[BatchEntry]:
    """The calls of a batch request's form fields, with each POST's fields decoded as the platform does."""
    entries = []
    for entry in json.loads(form["batch"]):
        url = urlsplit(entry["relative_url"])
        body: dict[str, object] = {}
        for key, value in parse_qsl(entry.get("body", "")):
            try:
                body[key] = json.loads(value)
            except ValueError:
                body[key] = value
        entries.append(BatchEntry(entry["method"].upper(), url.path, dict(parse_qsl(url.query)), body))
    return entries
