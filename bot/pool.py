"""A campaign's single-use codes in the transactional store: loading them, handing them out, redeeming them.

These functions run inside a transaction of bot.database, on its cursor (`?` placeholders on both engines).
"""

# The SQL is constant text and the engine's own clause; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from bot.engines import Engine
from bot.flow import IssuedCode
from bot.rows import Cursor

TOKEN_BYTES = 16  # 128 bits: a till link cannot be guessed
LOW_POOL_SHARE = 0.10  # below this share of codes free, the bot's log and the dashboard warn
_ROWS_PER_STATEMENT = 500


@dataclass(frozen=True, slots=True)
class PoolStatus:
    total: int
    free: int


def add_codes(cursor: Cursor, campaign_id: str, codes: Sequence[str]) -> int:
    """Add the codes the pool does not have yet, after those it has; returns how many were new."""
    cursor.execute("SELECT COALESCE(MAX(seq), 0) FROM codes WHERE campaign_id = ?", (campaign_id,))
    (last,) = cursor.fetchone()
    added = 0
    for start in range(0, len(codes), _ROWS_PER_STATEMENT):
        chunk = codes[start : start + _ROWS_PER_STATEMENT]
        values = ", ".join(["(?, ?, ?)"] * len(chunk))
        rows = [
            value for n, code in enumerate(chunk, start=last + start + 1) for value in (campaign_id, code, n)
        ]
        cursor.execute(
            f"INSERT INTO codes (campaign_id, code, seq) VALUES {values}"
            " ON CONFLICT (campaign_id, code) DO NOTHING RETURNING code",
            rows,
        )
        added += len(cursor.fetchall())
    return added


STATUS = "SELECT COUNT(*), COUNT(*) - COUNT(customer_id) FROM codes WHERE campaign_id = ?"


def status(cursor: Cursor, campaign_id: str) -> PoolStatus:
    cursor.execute(STATUS, (campaign_id,))
    total, free = cursor.fetchone()
    return PoolStatus(total, free)


def issue(
    cursor: Cursor,
    campaign_id: str,
    customer_id: str,
    *,
    page_id: str,
    variant: str | None,
    now_us: int,
    expires_us: int | None,
    engine: Engine,
) -> tuple[str, str, int | None] | None:
    """The customer's code for the campaign: the one handed to them before, or the next free one (which is
    theirs from now on). Returns (code, token, expires_at µs), or None when every code is handed out.

    Another instance may hand this customer a code meanwhile: its unique index is violated, and its code is
    theirs (`engine` names the error, and how to pass over rows another transaction holds).
    """
    existing = _handed_to(cursor, campaign_id, customer_id)
    if existing is not None:
        return existing
    token = secrets.token_urlsafe(TOKEN_BYTES)
    cursor.execute("SAVEPOINT issue_code")
    try:
        # A pipeline of its own (PostgreSQL): ending it syncs, so that after the error the transaction's
        # pipeline takes statements again.
        with engine.pipeline(cursor.connection):
            cursor.execute(
                "UPDATE codes SET customer_id = ?, page_id = ?, variant = ?, token = ?, assigned_at = ?,"
                " expires_at = ?"
                " WHERE campaign_id = ? AND customer_id IS NULL AND code = (SELECT code FROM codes"
                f" WHERE campaign_id = ? AND customer_id IS NULL ORDER BY seq LIMIT 1 {engine.skip_locked})"
                " RETURNING code",
                (customer_id, page_id, variant, token, now_us, expires_us, campaign_id, campaign_id),
            )
            row = cursor.fetchone()
    except engine.conflict:
        # Another transaction handed this customer a code and committed first: theirs it is.
        cursor.execute("ROLLBACK TO SAVEPOINT issue_code")
        return _handed_to(cursor, campaign_id, customer_id)
    finally:
        cursor.execute("RELEASE SAVEPOINT issue_code")
    return None if row is None else (row[0], token, expires_us)


@dataclass(frozen=True, slots=True)
class CodeState:
    """A code of a pool as the till sees it; times in µs since the epoch."""

    campaign_id: str
    code: str
    customer_id: str | None
    page_id: str | None
    variant: str | None
    token: str | None
    expires_at: int | None
    redeemed_at: int | None


_STATE = "campaign_id, code, customer_id, page_id, variant, token, expires_at, redeemed_at"


def find_query(
    *, token: str | None = None, campaign_id: str = "", code: str = ""
) -> tuple[str, tuple[str, ...]]:
    """The SELECT of the code with this till `token`, or this `code` of `campaign_id`, and its parameters."""
    if token is not None:
        return f"SELECT {_STATE} FROM codes WHERE token = ?", (token,)
    return f"SELECT {_STATE} FROM codes WHERE campaign_id = ? AND code = ?", (campaign_id, code)


def find(
    cursor: Cursor, *, token: str | None = None, campaign_id: str = "", code: str = ""
) -> CodeState | None:
    """The code with this till `token`, or this `code` of `campaign_id`; None when there is none."""
    cursor.execute(*find_query(token=token, campaign_id=campaign_id, code=code))
    row = cursor.fetchone()
    return None if row is None else CodeState(*row)


def redeem(cursor: Cursor, token: str, now_us: int) -> CodeState | None:
    """Mark the code with this till token used at `now_us`, if it is handed out, unused and not expired.

    Returns the code as it is now if this call redeemed it, None otherwise (`find` tells why). Two tills
    pressing at once: one update wins, the other finds the code used.
    """
    cursor.execute(
        "UPDATE codes SET redeemed_at = ? WHERE token = ? AND customer_id IS NOT NULL AND redeemed_at IS NULL"
        f" AND (expires_at IS NULL OR expires_at > ?) RETURNING {_STATE}",
        (now_us, token, now_us),
    )
    row = cursor.fetchone()
    return None if row is None else CodeState(*row)


def redeem_code(
    cursor: Cursor, campaign_id: str, code: str, at_us: int, skew_us: int
) -> tuple[str, CodeState | None]:
    """Mark `code` used at `at_us` as a till's export says: "new", "already" (used before), "unknown" (not in
    the pool, or never handed out) or "early" (more than `skew_us` before it was handed out: changes
    nothing), with the code's state when it was new. A time less early (a till's clock behind the bot's) is
    taken as the hand-out's: a code is not used before it exists."""
    cursor.execute(
        "SELECT assigned_at FROM codes WHERE campaign_id = ? AND code = ? AND customer_id IS NOT NULL",
        (campaign_id, code),
    )
    handed_out = cursor.fetchone()
    if handed_out is None:
        return "unknown", None
    if at_us < handed_out[0] - skew_us:
        return "early", None
    cursor.execute(
        "UPDATE codes SET redeemed_at = ? WHERE campaign_id = ? AND code = ? AND redeemed_at IS NULL"
        f" RETURNING {_STATE}",
        (max(at_us, handed_out[0]), campaign_id, code),
    )
    row = cursor.fetchone()
    return ("already", None) if row is None else ("new", CodeState(*row))


def _handed_to(cursor: Cursor, campaign_id: str, customer_id: str) -> tuple[str, str, int | None] | None:
    cursor.execute(
        "SELECT code, token, expires_at FROM codes WHERE campaign_id = ? AND customer_id = ?",
        (campaign_id, customer_id),
    )
    row = cursor.fetchone()
    return None if row is None else tuple(row)


__all__ = [
    "TOKEN_BYTES",
    "CodeState",
    "IssuedCode",
    "PoolStatus",
    "add_codes",
    "find",
    "issue",
    "redeem",
    "status",
]
