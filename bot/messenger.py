"""The Messenger Platform's wire format: check webhook signatures, parse webhook bodies, render messages.

Parsing is forgiving where the platform varies (unknown keys and event kinds, `standby` and `changes`
entries, opt-ins without a sender, timestamps as numbers or strings) and strict only about what makes a body
unusable as a whole.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from bot import jsontext

if TYPE_CHECKING:
    from bot.graph_batch import Encoded

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"


class MalformedBody(ValueError):
    """A webhook body that is not a Messenger notification at all."""


def sign(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value the platform sends with `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """True if `header` is the HMAC-SHA256 of the raw body under the app secret; constant time."""
    if not header:
        return False
    expected = sign(secret, body).encode()
    return hmac.compare_digest(expected, header.strip().lower().encode("ascii", "replace"))


# -- inbound ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inbound:
    """Who did it, to which page, when (ms since the epoch, the platform's clock)."""

    page_id: str
    customer_id: str
    ts_ms: int

    @property
    def kind(self) -> str:
        raise NotImplementedError

    @property
    def event_id(self) -> str:
        # Built from the platform's own fields, so a redelivered webhook yields the same id. Customer and
        # timestamp first: ids of one customer's events share their prefix, which compresses well. Two
        # messages of one customer can carry the same millisecond (see the batched fixture), so a short
        # digest of the platform's message id, when there is one, tells them apart.
        mid = getattr(self, "mid", None)
        suffix = f".{_digest(mid)}" if mid else ""
        return f"{self.customer_id}.{self.ts_ms}.{self.kind}{suffix}"


@dataclass(frozen=True, slots=True)
class Referral:
    """Where a customer came from: an m.me link's `ref`, the platform's `source` and `type` strings, and for a
    Click-to-Messenger ad its `ad_id` and title (`ads_context_data.ad_title`)."""

    ref: str | None
    source: str | None
    type: str | None
    ad_id: str | None = None
    ad_title: str | None = None


@dataclass(frozen=True, slots=True)
class Postback(Inbound):
    """A button click: a postback button, Get Started, the persistent menu, or a quick reply."""

    payload: str
    title: str | None = None
    mid: str | None = None
    referral: Referral | None = None  # set when Get Started follows an m.me link, an ad or a QR code

    @property
    def kind(self) -> str:
        return "p"


@dataclass(frozen=True, slots=True)
class ReferralEvent(Inbound):
    """An m.me link, ad or QR code opened in a thread that already exists."""

    referral: Referral

    @property
    def kind(self) -> str:
        return "r"


@dataclass(frozen=True, slots=True)
class TextMessage(Inbound):
    """A message the customer wrote (text or attachments). Its `text` is held in memory only, for the flow to
    match opt-out and opt-in words: it is never recorded, nor shown in a repr (logs). `referral` is set on the
    first message after a Click-to-Messenger ad (the `messages` reference's "Message with Ads referral")."""

    mid: str | None = None
    text: str | None = field(default=None, repr=False)
    referral: Referral | None = None

    @property
    def kind(self) -> str:
        return "m"


@dataclass(frozen=True, slots=True)
class Echo(Inbound):
    """A message the page sent to the customer, echoed back: by this bot, another app, or staff writing from
    the page's inbox (`app_id` names the app that sent it; the platform may leave it out)."""

    app_id: str | None = None
    mid: str | None = None

    @property
    def kind(self) -> str:
        return "e"


@dataclass(frozen=True, slots=True)
class Reaction(Inbound):
    """A customer reacting to a message (`action` "react" or "unreact"; `reaction` the platform's name of it,
    e.g. "love"); `mid` is the message reacted to."""

    reaction: str | None = None
    action: str | None = None
    mid: str | None = None

    @property
    def kind(self) -> str:
        return "x"


@dataclass(frozen=True, slots=True)
class Delivery(Inbound):
    watermark: int  # every message sent before this time (ms) is delivered
    mids: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return "d"

    @property
    def event_id(self) -> str:
        return f"{self.customer_id}.{self.watermark}.d"


@dataclass(frozen=True, slots=True)
class Read(Inbound):
    watermark: int  # every message sent before this time (ms) has been read

    @property
    def kind(self) -> str:
        return "rd"

    @property
    def event_id(self) -> str:
        return f"{self.customer_id}.{self.watermark}.rd"


def _digest(mid: str) -> str:
    return base64.b32encode(hashlib.blake2b(mid.encode(), digest_size=5).digest()).decode().lower()


def parse_body(body: bytes) -> list[Inbound]:
    """Every customer action in a webhook body, in order. Raises MalformedBody if it is not a notification."""
    try:
        document = jsontext.loads(body)
    except ValueError as exc:
        raise MalformedBody(f"not JSON: {exc}") from None
    except RecursionError:
        # orjson refuses nesting past 1,024 levels; the standard library, which reads what orjson refuses,
        # recurses once a level (and so does the scrubbing of what it read). No notification nests past ten.
        raise MalformedBody("not JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise MalformedBody("the body is not a JSON object")
    if b"\\u0000" in body:
        # PostgreSQL's text holds no NUL character: one in a ref or a payload would fail the whole commit.
        try:
            document = _without_nul(document)
        except RecursionError:
            raise MalformedBody("not JSON: nested too deeply") from None
    entries = document.get("entry")
    if not isinstance(entries, list):
        raise MalformedBody("no `entry` list")
    return list(_walk(entries))


def _without_nul(value: object) -> object:
    """`value` with every NUL in its strings (keys included) made U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


def _walk(entries: list[object]) -> Iterator[Inbound]:
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        # `standby` (another app owns the thread) and `changes` (page feed) are acknowledged, never answered.
        messaging = entry.get("messaging")
        if not isinstance(messaging, list):
            continue
        for item in messaging:
            if not isinstance(item, dict):
                continue
            try:
                parsed = _parse_messaging(item, entry.get("id"))
            except (TypeError, ValueError, KeyError) as exc:
                log.warning("skipped a messaging event that does not parse: %s", exc)
                continue
            if parsed is not None:
                yield parsed


class _Who(TypedDict):
    """The fields every inbound event has (see Inbound)."""

    page_id: str
    customer_id: str
    ts_ms: int


def _parse_messaging(item: Mapping[str, Any], entry_id: object) -> Inbound | None:
    message = item.get("message")
    if isinstance(message, dict) and message.get("is_echo"):
        return _echo(item, message, entry_id)
    customer = _party_id(item.get("sender"))
    if customer is None:
        return None  # e.g. a checkbox-plugin opt-in, known only by a user_ref: nobody to answer
    page = _party_id(item.get("recipient")) or _id(entry_id)
    if page is None:
        return None
    base: _Who = {"page_id": page, "customer_id": customer, "ts_ms": _millis(item.get("timestamp"))}

    if isinstance(message, dict):
        quick_reply = message.get("quick_reply")
        if isinstance(quick_reply, dict) and isinstance(quick_reply.get("payload"), str):
            return Postback(
                **base,
                payload=quick_reply["payload"],
                title=_text(message.get("text")),
                mid=_text(message.get("mid")),
            )
        return TextMessage(
            **base,
            mid=_text(message.get("mid")),
            text=_text(message.get("text")),
            referral=_message_referral(message.get("referral")),
        )
    if isinstance(postback := item.get("postback"), dict):
        return Postback(
            **base,
            payload=_text(postback.get("payload")) or "",
            title=_text(postback.get("title")),
            mid=_text(postback.get("mid")),
            referral=_referral(postback.get("referral")),
        )
    if (referral := _referral(item.get("referral"))) is not None:
        return ReferralEvent(**base, referral=referral)
    if isinstance(delivery := item.get("delivery"), dict):
        mids = delivery.get("mids")
        mids = tuple(m for m in mids if isinstance(m, str)) if isinstance(mids, list) else ()
        return Delivery(**base, watermark=_millis(delivery.get("watermark")), mids=mids)
    if isinstance(read := item.get("read"), dict):
        return Read(**base, watermark=_millis(read.get("watermark")))
    if isinstance(reaction := item.get("reaction"), dict):
        return Reaction(
            **base,
            reaction=_text(reaction.get("reaction")),
            action=_text(reaction.get("action")),
            mid=_text(reaction.get("mid")),
        )
    return None  # an event kind promobot does not act on (opt-ins, handovers, …)


def _echo(item: Mapping[str, Any], message: Mapping[str, Any], entry_id: object) -> Echo | None:
    """The page's own message: sent by the page (`sender`) to the customer (`recipient`). Some copies of
    echoes name the parties the other way round; the entry's id says which one is the page."""
    sender, recipient = _party_id(item.get("sender")), _party_id(item.get("recipient"))
    page, customer = sender, recipient
    if recipient is not None and recipient == _id(entry_id) and sender != recipient:
        page, customer = recipient, sender
    if customer is None or page is None:
        return None
    return Echo(
        page_id=page,
        customer_id=customer,
        ts_ms=_millis(item.get("timestamp")),
        app_id=_id(message.get("app_id")),
        mid=_text(message.get("mid")),
    )


_LAST_MS = 253_402_300_799_999  # the end of year 9999, the last a timestamp (and a partition) can name


def _millis(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"timestamp {value!r} is not a number")
    try:
        number = int(float(value))
    except OverflowError:  # infinity
        raise ValueError(f"timestamp {value!r} is not a number") from None
    # Some notifications carry seconds (as strings) instead of milliseconds.
    millis = number * 1000 if number < 100_000_000_000 else number
    if not 0 <= millis <= _LAST_MS:
        raise ValueError(f"timestamp {value!r} is out of range")
    return millis


def _party_id(party: object) -> str | None:
    """The id of a `sender` or `recipient` object."""
    return _id(party.get("id")) if isinstance(party, dict) else None


def _id(value: object) -> str | None:
    """An id as a string: a string, or an integer as some payloads carry it; None for anything else (a list,
    an object, true, a fraction), which names nobody."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _referral(value: object) -> Referral | None:
    if not isinstance(value, dict):
        return None
    ads = value.get("ads_context_data")
    return Referral(
        ref=_text(value.get("ref")),
        source=_text(value.get("source")),
        type=_text(value.get("type")),
        ad_id=_text(value.get("ad_id")) or None,
        ad_title=_text(ads.get("ad_title")) if isinstance(ads, dict) else None,
    )


def _message_referral(value: object) -> Referral | None:
    """A message's referral: an ad's (`source` ADS, its `ad_id`, an optional `ref`); None for one naming no
    origin, such as a Shops product page's (only a `product`)."""
    referral = _referral(value)
    if referral is None or not (referral.ref or referral.source or referral.ad_id):
        return None
    return referral


# -- outbound (Send API bodies) --------------------------------------------------------------------------


def text_message(text: str) -> dict[str, object]:
    return {"text": text}


def button_template(text: str, buttons: list[tuple[str, str]]) -> dict[str, object]:
    """A button template of postback buttons, each (title, payload)."""
    return {
        "attachment": {
            "type": "template",
            "payload": {
                "template_type": "button",
                "text": text,
                "buttons": [
                    {"type": "postback", "title": title, "payload": payload} for title, payload in buttons
                ],
            },
        }
    }


def image_message(url: str, *, reusable: bool = True) -> dict[str, object]:
    # Reusable: the platform fetches the image once and serves later sends from its cache (not for an image
    # of one customer's own).
    return {"attachment": {"type": "image", "payload": {"url": url, "is_reusable": reusable}}}


def send_body(
    recipient_id: str, message: Mapping[str, object] | Encoded, messaging_type: str = "RESPONSE"
) -> dict[str, object]:
    """A Send API request body, the message as a JSON object or encoded once for many customers.

    `messaging_type` is `RESPONSE` for an answer to the customer's own action, `UPDATE` for a message the
    page sends of itself (not in response to a received message); both only inside the customer's window.
    """
    return {"recipient": {"id": recipient_id}, "messaging_type": messaging_type, "message": message}
