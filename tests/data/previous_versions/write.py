"""Writes what an earlier version of promobot left behind, with that version's own code: the Parquet file its
flusher made of one customer's conversation.

    git archive <commit> bot data | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python tests/data/previous_versions/write.py tests/data/previous_versions/<commit>

Every call goes through the version's flow (`record`, `plan_replies`, `Reply.sent`), its webhook parser and
its store's `event_row`, `rows_to_table` and `parquet_bytes`: what those wrote is what the tests read back.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bot
from bot.campaign import load_campaign
from bot.flow import button_payload, plan_replies, record
from bot.messenger import parse_body
from bot.store import event_row, parquet_bytes, rows_to_table

try:
    from bot.facts import ButtonStep
except ImportError:  # versions before bot.facts
    from bot.flow import ButtonStep

PAGE = "111899832631525"
T0 = 1_772_366_400_000  # 2026-03-01 12:00:00 UTC, on the platform's clock
# Message ids as the platform gives them: "m_" and 86 characters of URL-safe base64.
WELCOME = "m_qr6GPBlzTU4jqP0PBqaIoIAcfn2p3T7uiO5jm0L_PMTKMJhEIUGFkEKQBhGkpCnPXVZNsYdkN7A2Sel0dOz_Iw"
COUPON = "m_Zx0Tq3kF8vV2rJp7LWmYcN4bHd9sGe1aUoQiRtE6yXwKf5nDlA_-SMBzCP0jT8hVuI2gOqYk7WxeL3rNaF9dZcw"
CLICKS = ("m_start-click-1001", "m_yes-click-1001", "m_reveal-click-1001", "m_text-1002")


def messaging(customer: str, ts: int, **kind: dict) -> dict:
    return {"sender": {"id": customer}, "recipient": {"id": PAGE}, "timestamp": ts, **kind}


def main(out: Path) -> None:
    root = Path(bot.__file__).resolve().parent.parent
    campaign = load_campaign(root / "data" / "campaign.toml", data_dir=root / "data")
    start, yes, reveal, text = CLICKS
    yes_payload, reveal_payload = (
        button_payload(campaign, step) for step in (ButtonStep.YES, ButtonStep.REVEAL)
    )
    # What the platform sent (customers' actions and receipts, on its clock) and what the bot's sends got
    # back (the platform's message id, and the bot's own clock once the Send API answered).
    webhooks = [
        messaging("1001", T0, postback={"title": "Get Started", "payload": "GET_STARTED", "mid": start}),
        ("sent", WELCOME, T0 + 800),
        messaging("1001", T0 + 1_500, delivery={"mids": [WELCOME], "watermark": T0 + 700}),
        messaging("1001", T0 + 20_000, postback={"title": "Yes", "payload": yes_payload, "mid": yes}),
        ("sent", COUPON, T0 + 20_800),
        messaging("1001", T0 + 21_500, delivery={"mids": [COUPON], "watermark": T0 + 20_700}),
        messaging("1001", T0 + 25_000, read={"watermark": T0 + 20_700}),
        messaging(
            "1001", T0 + 40_000, postback={"title": "Reveal", "payload": reveal_payload, "mid": reveal}
        ),
        ("failed", None, T0 + 40_900),
        messaging("1002", T0 + 50_000, message={"mid": text, "text": "hello"}),
    ]
    events, owed = [], []
    for item in webhooks:
        if isinstance(item, tuple):
            outcome, message_id, at_ms = item
            reply = owed.pop(0)
            at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=at_ms)
            if outcome == "sent":
                events.append(reply.sent(message_id, at))
            else:
                events.append(reply.failed(at, code=551, subcode=1545041, reason="unavailable"))
            continue
        body = json.dumps({"object": "page", "entry": [{"id": PAGE, "time": T0, "messaging": [item]}]})
        for action in parse_body(body.encode()):
            for event in record(campaign, action):
                events.append(event)
                owed += plan_replies(event)
    rows = [event_row(event) for event in events]
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.parquet").write_bytes(parquet_bytes(rows_to_table(rows)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
