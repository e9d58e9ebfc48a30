"""Campaigns as tests use them (the example, a single-use one), and what the flow makes of clicks."""

from __future__ import annotations

import hashlib
import tomllib

from bot.campaign import Campaign, load_campaign, parse_campaign
from bot.events import Event
from bot.facts import ButtonStep
from bot.flow import Reply, button_payload, plan_replies, record
from bot.messenger import parse_body
from tests.support import payloads
from tests.support.paths import REPO

EXAMPLE = REPO / "data" / "campaign.toml"
CAMPAIGN = load_campaign(EXAMPLE, data_dir=REPO / "data")
CODES = [f"SPR-{n:04d}" for n in range(50)]


def example() -> dict:
    """The example campaign file, parsed, for a test to change."""
    return tomllib.loads(EXAMPLE.read_text())


def single_use(**coupon: object) -> dict:
    """The example campaign with single-use codes from spring-codes.csv instead of its shared code."""
    raw = example()
    raw["coupon"].pop("code")
    raw["coupon"].update(codes="spring-codes.csv", all_gone="Sorry, all gone!", **coupon)
    return raw


SINGLE_USE = parse_campaign(single_use(valid_days=7))


def act(*messaging: dict, campaign: Campaign = CAMPAIGN) -> tuple[list[Event], list[Reply]]:
    """Events and replies for a webhook body, as the bot computes them."""
    events = [e for action in parse_body(payloads.envelope(*messaging)) for e in record(campaign, action)]
    return events, [reply for event in events for reply in plan_replies(event)]


def reveal(customer: str, mid: str | None = None) -> tuple[list[Event], list[Reply]]:
    """The events and replies of a customer's click on *Reveal the coupon* of SINGLE_USE (the same for the
    same arguments, as a redelivered webhook is)."""
    ts = 1_773_489_600_000 + int(customer) + (1000 if mid else 0)  # the platform's time of the click
    payload = button_payload(SINGLE_USE, ButtonStep.REVEAL)
    click = payloads.postback(customer, payload, ts=ts, mid=mid or f"m_reveal_{customer}")
    return act(click, campaign=SINGLE_USE)


def hashed_variant(campaign: Campaign, customer: str) -> str:
    """The contract's assignment, written out independently of bot.campaign."""
    digest = hashlib.sha256(f"{campaign.id}\x00{customer}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    total = sum(v.weight for v in campaign.variants)
    cumulative = 0.0
    for variant in campaign.variants:
        cumulative += variant.weight / total
        if cumulative > u:
            return variant.name
    raise AssertionError("shares add up to less than u")


def customer_of(variant: str, campaign: Campaign) -> str:
    """A customer whom the hash gives `variant` of `campaign`."""
    return next(c for c in (str(n) for n in range(1000)) if hashed_variant(campaign, c) == variant)
