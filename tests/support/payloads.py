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


def echo(customer: str, *, app_id: str | int | None, ts: int | None = None, mid: str = "m_echo1") -> dict:
    """The page's own message echoed back (`message_echoes`): sent by the page to the customer, by the app
    `app_id` (the bot's, or the page inbox's when staff write by hand)."""
    message = {"is_echo": True, "mid": mid, "text": "Hello from the shop"}
    if app_id is not None:
        message["app_id"] = app_id
    return {
        "sender": {"id": PAGE},
        "recipient": {"id": customer},
        "timestamp": ts or now_ms(),
        "message": message,
    }


def reaction(customer: str, mid: str, *, ts: int | None = None, action: str = "react") -> dict:
    """A customer's reaction to the page's message `mid` (`message_reactions`)."""
    body = {"reaction": "love", "emoji": "\u2764\ufe0f", "action": action, "mid": mid}
    return {**_base(customer, ts), "reaction": body}


def ad_referral(customer: str, ad_id: str = "6045246247433", *, ts: int | None = None) -> dict:
    """A Click-to-Messenger ad opened in a thread that exists (`source` ADS)."""
    body = {"source": "ADS", "type": "OPEN_THREAD", "ad_id": ad_id, "ads_context_data": {"ad_title": "Sale"}}
    return {**_base(customer, ts), "referral": body}
