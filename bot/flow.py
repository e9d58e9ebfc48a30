"""The promo conversation, as pure functions: no I/O, no clock, no session.

Two steps, both deterministic:

- `record(campaign, inbound)`: what a customer's action means, as the events to log before acknowledging;
- `plan_replies(campaign, event)`: the messages an event calls for. Because replies are planned from logged
  events, a restarted bot re-plans the replies it still owes from its log, with the same ids.

What a button means travels in its payload (`campaign|variant|step`), so any instance answers any click.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from bot.campaign import FIRST_NAME_ROOM, Campaign
from bot.events import Event, detail_json, message_digest
from bot.facts import CLICK_EVENTS, Button, ButtonStep, EventName, parse_payload
from bot.messenger import (
    Delivery,
    Inbound,
    Postback,
    Read,
    ReferralEvent,
    TextMessage,
    button_template,
    image_message,
    text_message,
)

NEUTRAL_NAME_GREETING = "there"  # "Hi there!" when the first name is unknown


def button_payload(campaign: Campaign, step: ButtonStep) -> str:
    """The payload of this campaign's button for `step`."""
    return Button(campaign.id, campaign.variant, step).payload


class ReplyKind(StrEnum):
    WELCOME = "welcome"
    COUPON = "coupon"
    CODE = "code"
    THANKS_TEXT = "thanks_text"
    THANKS_IMAGE = "thanks_image"
    ALL_GONE = "all_gone"  # instead of the code, when the campaign's single-use codes are all handed out
    CODE_QR = "code_qr"  # after a single-use code: its till link as a QR code, for the till to scan
    REDEEMED = "redeemed"  # the campaign's thanks once a code is used at the till, if it has one


# What each reply records when it is sent, and the suffix of that event's id.
_SENT = {
    ReplyKind.WELCOME: (EventName.WELCOME_SENT, "w"),
    ReplyKind.COUPON: (EventName.COUPON_SENT, "c"),
    ReplyKind.CODE: (EventName.CODE_SENT, "k"),
    ReplyKind.THANKS_TEXT: (EventName.THANKS_SENT, "t"),
    ReplyKind.THANKS_IMAGE: (EventName.THANKS_SENT, "i"),
    ReplyKind.ALL_GONE: (EventName.ALL_GONE_SENT, "g"),
    ReplyKind.CODE_QR: (EventName.CODE_SENT, "q"),
    ReplyKind.REDEEMED: (EventName.THANKS_SENT, "r"),
}
# What tells a sent event apart from another of the same name.
_PARTS = {ReplyKind.THANKS_IMAGE: "image", ReplyKind.CODE_QR: "qr", ReplyKind.REDEEMED: "redeemed"}
_ANSWERS = {
    EventName.CONVERSATION_STARTED: (ReplyKind.WELCOME,),
    EventName.COUPON_REQUESTED: (ReplyKind.COUPON,),
    EventName.COUPON_REVEALED: (ReplyKind.CODE,),
    EventName.DECLINED: (ReplyKind.THANKS_TEXT, ReplyKind.THANKS_IMAGE),
}


@dataclass(frozen=True, slots=True)
class IssuedCode:
    """A single-use code handed to a customer: the code, its till link's token, when it stops being valid."""

    code: str
    token: str
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Reply:
    """One message owed to a customer, answering the logged event `answers` (a code reply of a campaign with
    single-use codes: with the `issued` code)."""

    kind: ReplyKind
    answers: Event
    issued: IssuedCode | None = None

    @property
    def customer_id(self) -> str:
        return self.answers.customer_id

    @property
    def sent_id(self) -> str:
        return f"{self.answers.event_id}.{_SENT[self.kind][1]}"

    @property
    def failed_id(self) -> str:
        return f"{self.sent_id}.f"

    @property
    def needs_first_name(self) -> bool:
        return self.kind is ReplyKind.WELCOME

    def sent(self, message_id: str | None, at: datetime) -> Event:
        """The event recording this reply as sent at `at` (the bot's clock, once the Send API answered), with
        the digest of the `message_id` the platform gave it, if any."""
        name, _ = _SENT[self.kind]
        detail = detail_json(part=_PARTS[self.kind]) if self.kind in _PARTS else None
        digest = message_digest(message_id) if message_id is not None else None
        return self._outcome(self.sent_id, name, at, message_digest=digest, detail=detail)

    def failed(self, at: datetime, *, code: int | None, subcode: int | None, reason: str) -> Event:
        detail = detail_json(reply=str(self.kind), code=code, subcode=subcode, reason=reason)
        return self._outcome(self.failed_id, EventName.SEND_FAILED, at, detail=detail)

    def _outcome(self, event_id: str, name: EventName, at: datetime, **columns: str | int | None) -> Event:
        source = self.answers
        return Event(
            event_id=event_id,
            ts=max(at, source.ts),
            page_id=source.page_id,
            customer_id=source.customer_id,
            campaign_id=source.campaign_id,
            variant=source.variant,
            event=name,
            source=source.source,
            **columns,
        )


# -- step 1: what happened ---------------------------------------------------------------------------------


def record(campaign: Campaign, inbound: Inbound) -> list[Event]:
    """The events a customer's action becomes, in order."""

    def event(
        name: EventName,
        *,
        event_id: str | None = None,
        variant: str | None = campaign.variant,
        **columns: str | int | None,
    ) -> Event:
        return Event(
            event_id=event_id or inbound.event_id,
            ts=datetime.fromtimestamp(inbound.ts_ms / 1000, UTC),
            page_id=inbound.page_id,
            customer_id=inbound.customer_id,
            campaign_id=campaign.id,
            variant=variant,
            event=name,
            **columns,
        )

    match inbound:
        # A customer's own message or click keeps its platform id only as the digest in its event id (which
        # tells two of them in one millisecond apart): nothing reads the id back. The bot's sends, and the
        # delivery receipts that name them, keep a `message_digest` of theirs.
        case Postback(payload=payload, referral=referral):
            button = parse_payload(payload)
            if button is not None and button.campaign_id == campaign.id:
                return [event(CLICK_EVENTS[button.step], variant=button.variant, button=payload)]
            # Get Started, a menu item, or a button of a campaign that has ended: the conversation (re)starts.
            fields = {"trigger": "postback"}
            if referral is not None:
                fields.update(ref=referral.ref, source=referral.source)
            return [
                event(EventName.CONVERSATION_STARTED, button=payload or None, detail=detail_json(**fields))
            ]
        case ReferralEvent(referral=referral):
            detail = detail_json(trigger="referral", ref=referral.ref, source=referral.source)
            return [event(EventName.CONVERSATION_STARTED, detail=detail)]
        case TextMessage():
            return [
                event(EventName.TEXT_RECEIVED),
                event(
                    EventName.CONVERSATION_STARTED,
                    event_id=f"{inbound.event_id}.s",
                    detail=detail_json(trigger="text"),
                ),
            ]
        case Delivery(watermark=watermark, mids=mids):
            return [
                event(
                    EventName.MESSAGE_DELIVERED,
                    message_digest=message_digest(mids[-1]) if mids else None,
                    watermark=watermark,
                )
            ]
        case Read(watermark=watermark):
            return [event(EventName.MESSAGE_READ, watermark=watermark)]
    raise TypeError(f"not a customer action: {inbound!r}")


# -- step 2: what to answer --------------------------------------------------------------------------------


def plan_replies(event: Event) -> list[Reply]:
    """The messages an event calls for (none for receipts, texts received, and replies themselves)."""
    return [Reply(kind, event) for kind in _ANSWERS.get(EventName(event.event), ())]


def render(campaign: Campaign, kind: ReplyKind, *, first_name: str | None, image_url: str) -> dict:
    """The Send API `message` object for a reply of this kind."""
    match kind:
        case ReplyKind.WELCOME:
            return button_template(
                render_welcome_text(campaign, first_name),
                [
                    (campaign.yes, button_payload(campaign, ButtonStep.YES)),
                    (campaign.no, button_payload(campaign, ButtonStep.NO)),
                ],
            )
        case ReplyKind.COUPON:
            return button_template(
                campaign.coupon_text, [(campaign.reveal, button_payload(campaign, ButtonStep.REVEAL))]
            )
        case ReplyKind.CODE:
            if campaign.code is None:
                raise ValueError("a campaign of single-use codes renders each code with render_code")
            return text_message(campaign.code)
        case ReplyKind.ALL_GONE:
            return text_message(campaign.all_gone or "")
        case ReplyKind.REDEEMED:
            return text_message(campaign.redeemed_text or "")
        case ReplyKind.THANKS_TEXT:
            return text_message(campaign.thanks_text)
        case ReplyKind.THANKS_IMAGE:
            return image_message(image_url)
    raise ValueError(f"unknown reply {kind}")


def render_code(campaign: Campaign, issued: IssuedCode, till_url: str) -> dict:
    """The message that shows a customer their single-use code, its last valid day and its till link."""
    if issued.expires_at is None:
        expires = "no end date"
    else:
        last_moment = (issued.expires_at - timedelta(microseconds=1)).astimezone(campaign.zone)
        expires = f"{last_moment.day} {last_moment:%B %Y}"
    link = till_link(till_url, issued)
    return text_message(campaign.code_text.format(code=issued.code, expires=expires, link=link))


def till_link(till_url: str, issued: IssuedCode) -> str:
    """The link a code's till page has; its QR code is at the same address plus `/qr.png`."""
    return f"{till_url}/redeem/{issued.token}"


def render_code_qr(issued: IssuedCode, till_url: str) -> dict:
    """The image message of a single-use code's till link as a QR code, which the bot serves itself."""
    return image_message(f"{till_link(till_url, issued)}/qr.png", reusable=False)


def render_welcome_text(campaign: Campaign, first_name: str | None) -> str:
    name = " ".join((first_name or "").split())[:FIRST_NAME_ROOM] or NEUTRAL_NAME_GREETING
    return campaign.welcome_text.format(first_name=name)
