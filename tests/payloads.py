"""Webhook bodies shaped like the platform's (see tests/data/messenger for the real ones they follow)."""

from __future__ import annotations

import json
import time

PAGE = "111899832631525"


def now_ms() -> int:
    return int(time.time() * 1000)


def envelope(*messaging: dict, page: str = PAGE) -> bytes:
    return json.dumps(
        {"object": "page", "entry": [{"id": page, "time": now_ms(), "messaging": list(messaging)}]}
    ).encode()


def _base(customer: str, ts: int | None, page: str = PAGE) -> dict:
    return {"sender": {"id": customer}, "recipient": {"id": page}, "timestamp": ts or now_ms()}


def postback(
    customer: str,
    payload: str,
    *,
    ts: int | None = None,
    mid: str | None = None,
    title: str = "Button",
    ref: str | None = None,
) -> dict:
    body = {"title": title, "payload": payload}
    if mid:
        body["mid"] = mid
    if ref is not None:
        body["referral"] = {"ref": ref, "source": "SHORTLINK", "type": "OPEN_THREAD"}
    return {**_base(customer, ts), "postback": body}


def text(customer: str, words: str = "hello", *, ts: int | None = None, mid: str = "m_text1") -> dict:
    return {**_base(customer, ts), "message": {"mid": mid, "text": words}}


def referral(customer: str, ref: str, *, ts: int | None = None) -> dict:
    return {**_base(customer, ts), "referral": {"ref": ref, "source": "SHORTLINK", "type": "OPEN_THREAD"}}


def delivery(customer: str, mids: list[str], watermark: int) -> dict:
    return {**_base(customer, watermark), "delivery": {"mids": mids, "watermark": watermark}}


def read(customer: str, watermark: int, *, ts: int | None = None) -> dict:
    return {**_base(customer, ts or watermark + 1), "read": {"watermark": watermark}}
