"""The promo conversation, as pure functions: no I/O, no clock, no session.

- `record(campaign, inbound, rules)`: what a customer's action means, as the events to record;
- `plan_replies(event)`: the messages an event calls for.

What a button means travels in its payload (`campaign|variant|step`), so any instance answers any click.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from bot.campaign import FIRST_NAME_ROOM, Campaign
from bot.config import (
    DEFAULT_DELETE_WORDS,
    DEFAULT_HANDOVER_MINUTES,
    DEFAULT_OPT_IN_WORDS,
    DEFAULT_OPT_OUT_WORDS,
    Settings,
    keyword,
)
from bot.events import Event, detail_json, message_digest
from bot.facts import CLICK_EVENTS, Button, ButtonStep, EventName, parse_payload
from bot.messenger import (
    Delivery,
    Echo,
    Inbound,
    Postback,
    Reaction,
    Read,
    Referral,
    ReferralEvent,
    TextMessage,
    button_template,
    image_message,
    text_message,
)

NEUTRAL_NAME_GREETING = "there"  # "Hi there!" when the first name is unknown

# An entry link's ref, as `python -m bot links` writes it: `<campaign>.<placement>[.<variant>]`.
_ENTRY_REF = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)(?:\.([A-Za-z0-9_-]+))?")
DIRECT = "direct"  # the source of a journey with no referral (or one whose ref the client dropped)
SOURCE_LIMIT = 64  # characters kept of a ref that is not an entry link's
SHARE_DECIMALS = 4  # of the planned shares recorded with each conversation_started

# The persistent menu's item that opts a customer out (`python -m bot doctor --fix` sets the menu).
OPT_OUT_PAYLOAD = "PROMOBOT_OPT_OUT"
OPT_OUT_MENU_TITLE = "Stop promotions"
DEFAULT_HANDOVER = timedelta(minutes=DEFAULT_HANDOVER_MINUTES)


@dataclass(frozen=True, slots=True)
class PageRules:
    """What the flow knows beyond the campaign: the words that opt a customer out and back in (as `keyword`
    makes them), the bot's own app id (its echoes are its own sends; None: unknown, and no echo pauses the
    bot), and how long staff writing from the page's inbox pause it."""

    opt_out_words: frozenset[str] = frozenset(DEFAULT_OPT_OUT_WORDS)
    opt_in_words: frozenset[str] = frozenset(DEFAULT_OPT_IN_WORDS)
    app_id: str | None = None
    handover: timedelta = DEFAULT_HANDOVER
    delete_words: frozenset[str] = frozenset(DEFAULT_DELETE_WORDS)

    @classmethod
    def of(
        cls,
        opt_out_words: Iterable[str] = DEFAULT_OPT_OUT_WORDS,
        opt_in_words: Iterable[str] = DEFAULT_OPT_IN_WORDS,
        *,
        app_id: str | None = None,
        handover: timedelta = DEFAULT_HANDOVER,
        delete_words: Iterable[str] = DEFAULT_DELETE_WORDS,
    ) -> PageRules:
        """Rules from the words as configured (matched as `keyword` makes them)."""
        return cls(
            frozenset(filter(None, map(keyword, opt_out_words))),
            frozenset(filter(None, map(keyword, opt_in_words))),
            app_id or None,
            handover,
            frozenset(filter(None, map(keyword, delete_words))),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> PageRules:
        """The rules `settings` give (PROMOBOT_OPT_OUT_WORDS, _OPT_IN_WORDS, _APP_ID, _HANDOVER_MINUTES)."""
        return cls.of(
            settings.opt_out_words,
            settings.opt_in_words,
            app_id=settings.app_id,
            handover=timedelta(minutes=settings.handover_minutes),
            delete_words=settings.delete_words,
        )


DEFAULT_RULES = PageRules()


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
    OPTED_OUT = "opted_out"  # the one-time confirmation of an opt-out
    OPTED_IN = "opted_in"  # the one-time confirmation of an opt-in
    DELETED = "deleted"  # the answer to a request to delete the customer's data


# Replies that are not promotions: sent to a customer who opted out (they confirm it).
CONFIRMATIONS = frozenset({ReplyKind.OPTED_OUT, ReplyKind.OPTED_IN, ReplyKind.DELETED})


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
    ReplyKind.OPTED_OUT: (EventName.THANKS_SENT, "o"),
    ReplyKind.OPTED_IN: (EventName.THANKS_SENT, "n"),
    ReplyKind.DELETED: (EventName.THANKS_SENT, "x"),
}
# What tells a sent event apart from another of the same name.
_PARTS = {
    ReplyKind.THANKS_IMAGE: "image",
    ReplyKind.CODE_QR: "qr",
    ReplyKind.REDEEMED: "redeemed",
    ReplyKind.OPTED_OUT: "opted_out",
    ReplyKind.OPTED_IN: "opted_in",
    ReplyKind.DELETED: "deleted",
}
_ANSWERS = {
    EventName.CONVERSATION_STARTED: (ReplyKind.WELCOME,),
    EventName.COUPON_REQUESTED: (ReplyKind.COUPON,),
    EventName.COUPON_REVEALED: (ReplyKind.CODE,),
    EventName.DECLINED: (ReplyKind.THANKS_TEXT, ReplyKind.THANKS_IMAGE),
    EventName.OPTED_OUT: (ReplyKind.OPTED_OUT,),
    EventName.OPTED_IN: (ReplyKind.OPTED_IN,),
    EventName.DELETION_REQUESTED: (ReplyKind.DELETED,),
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
    def withdrawn_id(self) -> str:
        return f"{self.sent_id}.d"

    @property
    def needs_first_name(self) -> bool:
        return self.kind is ReplyKind.WELCOME

    @property
    def is_promotion(self) -> bool:
        """Everything but the confirmations of an opt-out or opt-in: never sent to those who opted out."""
        return self.kind not in CONFIRMATIONS

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

    def withdrawn(self, at: datetime, reason: str) -> Event:
        """The event recording this reply as taken back unsent at `at` (the bot's clock), and why (a
        bot.audience.Reason: `opted_out`, `handed_over`)."""
        detail = detail_json(reply=str(self.kind), reason=reason)
        return self._outcome(self.withdrawn_id, EventName.REPLY_WITHDRAWN, at, detail=detail)

    def _outcome(
        self,
        event_id: str,
        name: EventName,
        at: datetime,
        *,
        message_digest: int | None = None,
        detail: str | None = None,
    ) -> Event:
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
            message_digest=message_digest,
            detail=detail,
        )


# -- step 1: what happened ---------------------------------------------------------------------------------


def journey_source(referral: Referral | None) -> str:
    """Where a journey came from, the first that applies: an entry link's placement, any other ref (cut to
    SOURCE_LIMIT characters), `ad:<ad_id>`, the platform's referral source as it sent it, or `direct`."""
    if referral is None:
        return DIRECT
    if referral.ref:
        entry = _ENTRY_REF.fullmatch(referral.ref)
        return entry.group(2) if entry else referral.ref[:SOURCE_LIMIT]
    if referral.ad_id:
        return f"ad:{referral.ad_id}"
    return referral.source or DIRECT


def forced_variant(campaign: Campaign, referral: Referral | None) -> str | None:
    """The variant an entry link of this campaign names (`<campaign>.<placement>.<variant>`), if the campaign
    has it; None otherwise (the customer's variant is then the hash's)."""
    if referral is None or not referral.ref or not campaign.variants:
        return None
    entry = _ENTRY_REF.fullmatch(referral.ref)
    if entry is None or entry.group(1) != campaign.id:
        return None
    names = {variant.name for variant in campaign.variants}
    return entry.group(3) if entry.group(3) in names else None


def _start_detail(campaign: Campaign, trigger: str, referral: Referral | None, forced: bool) -> str:
    """The `detail` of a conversation_started: what started it, the referral's fields that it has, and for an
    A/B test the variants with their planned shares (the first is the reference)."""
    fields: dict[str, object] = {"trigger": trigger}
    if referral is not None:
        fields.update(ref=referral.ref, source=referral.source)
        optional = {"type": referral.type, "ad_id": referral.ad_id, "ad_title": referral.ad_title}
        fields.update({key: value for key, value in optional.items() if value is not None})
    if forced:
        fields["variant_forced"] = True
    if campaign.variants:
        fields["variants"] = [[name, round(share, SHARE_DECIMALS)] for name, share in campaign.shares]
    return detail_json(**fields)


def record(campaign: Campaign, inbound: Inbound, rules: PageRules = DEFAULT_RULES) -> list[Event]:
    """The events a customer's action (or the page's echoed message) becomes, in order.

    A journey starts with a conversation_started that carries its `source`; every event carries the
    customer's variant (a click, the one its button names). Opt-out and opt-in words of `rules`, reactions
    and staff's echoes become `opted_out` / `opted_in`, `reaction_received` and `handed_over`; what they
    change is the store's to say, which knows the customer's state.
    """
    assigned = campaign.assigned_variant(inbound.customer_id) if campaign.variants else campaign.variant

    def event(
        name: EventName,
        *,
        event_id: str | None = None,
        variant: str | None = assigned,
        button: str | None = None,
        message_digest: int | None = None,
        detail: str | None = None,
        watermark: int | None = None,
        source: str | None = None,
    ) -> Event:
        return Event(
            event_id=event_id or inbound.event_id,
            ts=datetime.fromtimestamp(inbound.ts_ms / 1000, UTC),
            page_id=inbound.page_id,
            customer_id=inbound.customer_id,
            campaign_id=campaign.id,
            variant=variant,
            event=name,
            button=button,
            message_digest=message_digest,
            detail=detail,
            watermark=watermark,
            source=source,
        )

    match inbound:
        # A customer's own message or click keeps its platform id only as the digest in its event id (which
        # tells two of them in one millisecond apart): nothing reads the id back. The bot's sends, and the
        # delivery receipts that name them, keep a `message_digest` of theirs.
        case Postback(payload=payload) if payload == OPT_OUT_PAYLOAD:
            return [event(EventName.OPTED_OUT, button=payload, detail=detail_json(trigger="menu"))]
        case Postback(payload=payload, referral=referral):
            button = parse_payload(payload)
            if button is not None and button.campaign_id == campaign.id:
                return [event(CLICK_EVENTS[button.step], variant=button.variant, button=payload)]
            # Get Started, a menu item, or a button of a campaign that has ended: the conversation (re)starts.
            return [_started(campaign, event, "postback", referral, button=payload or None)]
        case ReferralEvent(referral=referral):
            # An entry link or ad opened in a thread that exists: a new journey, from there.
            return [_started(campaign, event, "referral", referral)]
        case TextMessage(text=text, referral=referral):
            # The words themselves are matched here and never recorded. A first message after a
            # Click-to-Messenger ad carries the ad's referral: the journey comes from the ad.
            said = keyword(text) if text else ""
            received = event(EventName.TEXT_RECEIVED)
            started = _started(campaign, event, "text", referral, event_id=f"{inbound.event_id}.s")
            if said in rules.opt_out_words:
                opted = event(EventName.OPTED_OUT, event_id=f"{inbound.event_id}.o", detail=_TEXT_TRIGGER)
                return [received, opted]
            if said in rules.delete_words:
                # bot.database records the request in the same transaction; bot.privacy carries it out.
                asked = event(
                    EventName.DELETION_REQUESTED, event_id=f"{inbound.event_id}.x", detail=_TEXT_TRIGGER
                )
                return [received, asked]
            if said in rules.opt_in_words:
                opted = event(EventName.OPTED_IN, event_id=f"{inbound.event_id}.i", detail=_TEXT_TRIGGER)
                return [received, opted, started]
            return [received, started]
        case Reaction(reaction=reaction, action=action):
            return [event(EventName.REACTION_RECEIVED, detail=detail_json(reaction=reaction, action=action))]
        case Echo(app_id=app_id):
            # The bot's own send; or one it cannot tell from its own (its app id unknown, or an echo naming
            # no app): pausing the bot after each of its own messages would silence it.
            if rules.app_id is None or app_id is None or app_id == rules.app_id:
                return []
            minutes = rules.handover / timedelta(minutes=1)
            detail = detail_json(app_id=app_id, minutes=int(minutes) if minutes.is_integer() else minutes)
            return [event(EventName.HANDED_OVER, detail=detail)]
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


_TEXT_TRIGGER = detail_json(trigger="text")


def handover_span(event: Event) -> timedelta:
    """How long a `handed_over` event pauses the bot for its customer (its `detail`'s minutes)."""
    return timedelta(minutes=float(json.loads(event.detail or "{}").get("minutes", 0)))


def _started(
    campaign: Campaign,
    event: Callable[..., Event],
    trigger: str,
    referral: Referral | None,
    **columns: str | None,
) -> Event:
    forced = forced_variant(campaign, referral)
    if forced is not None:
        columns["variant"] = forced
    return event(
        EventName.CONVERSATION_STARTED,
        source=journey_source(referral),
        detail=_start_detail(campaign, trigger, referral, forced is not None),
        **columns,
    )


# -- step 2: what to answer --------------------------------------------------------------------------------


def plan_replies(event: Event) -> list[Reply]:
    """The messages an event calls for (none for receipts, texts received, and replies themselves)."""
    return [Reply(kind, event) for kind in _ANSWERS.get(EventName(event.event), ())]


def render(
    campaign: Campaign, kind: ReplyKind, *, first_name: str | None, image_url: str
) -> dict[str, object]:
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
        case ReplyKind.OPTED_OUT:
            return text_message(campaign.opt_out_text)
        case ReplyKind.OPTED_IN:
            return text_message(campaign.opt_in_text)
        case ReplyKind.DELETED:
            return text_message(campaign.deletion_text)
    raise ValueError(f"unknown reply {kind}")


def render_code(campaign: Campaign, issued: IssuedCode, till_url: str) -> dict[str, object]:
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


def render_code_qr(issued: IssuedCode, till_url: str) -> dict[str, object]:
    """The image message of a single-use code's till link as a QR code, which the bot serves itself."""
    return image_message(f"{till_link(till_url, issued)}/qr.png", reusable=False)


def render_welcome_text(campaign: Campaign, first_name: str | None) -> str:
    name = " ".join((first_name or "").split())[:FIRST_NAME_ROOM] or NEUTRAL_NAME_GREETING
    text = campaign.welcome_text.format(first_name=name)
    return f"{campaign.disclosure}\n\n{text}" if campaign.disclosure else text
