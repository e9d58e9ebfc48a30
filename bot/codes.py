"""Single-use coupon codes: the file a shop keeps them in, and making new ones.

A codes file holds one code per line, with an optional header line `code`. Codes are read at start-up; a
file that is missing, empty, repeats a code or has a line that is not a code is refused, naming the file and
the line.

    python -m bot codes generate --count 500 --prefix SPR- --out data/spring-codes.csv
"""

from __future__ import annotations

import csv
import re
import secrets
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path

# Letters and digits a cashier cannot misread: no O/0, no I/1/L.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
MIN_LENGTH = 6  # 31**6 is 887 million: a guess hits one of 5,000 codes once in about 180,000 tries
DEFAULT_LENGTH = 8
HEADER = "code"
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$")


class CodesError(ValueError):
    """A codes file that cannot be used; the message names the file and, where it is one line, the line."""


def load_codes(path: Path) -> list[str]:
    """The codes in a codes file, in file order. Raises CodesError."""
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte order mark.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CodesError(f"{path}: no such codes file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CodesError(f"{path}: cannot read it: {exc}") from None
    codes: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        code = line.strip()
        if not code or (number == 1 and code.lower() == HEADER):
            continue
        if not _CODE.match(code):
            raise CodesError(
                f"{path}: line {number}: {code[:40]!r} is not a code (3 to 64 letters, digits, '-' or '_', "
                "one code per line)"
            )
        if code in first_line:
            raise CodesError(f"{path}: line {number}: {code!r} repeats line {first_line[code]}")
        first_line[code] = number
        codes.append(code)
    if not codes:
        raise CodesError(f"{path}: no codes in it (one code per line, an optional header line `code`)")
    return codes


def generate(
    count: int, *, prefix: str = "", length: int = DEFAULT_LENGTH, avoid: Sequence[str] = ()
) -> list[str]:
    """`count` new random codes, `prefix` + `length` characters of ALPHABET, none in `avoid` or repeated.

    Raises: ValueError for a count below 1, a length below MIN_LENGTH, or a prefix that codes cannot hold.
    """
    if count < 1:
        raise ValueError("--count must be at least 1")
    if length < MIN_LENGTH:
        raise ValueError(f"--length must be at least {MIN_LENGTH}: shorter codes can be guessed")
    if not _CODE.match(f"{prefix}{'A' * length}"):
        raise ValueError(f"--prefix {prefix!r}: codes may hold only letters, digits, '-' and '_', 64 at most")
    taken = set(avoid)
    codes: list[str] = []
    while len(codes) < count:
        code = prefix + "".join(secrets.choice(ALPHABET) for _ in range(length))
        if code not in taken:
            taken.add(code)
            codes.append(code)
    return codes


def generate_command(count: int, prefix: str, length: int, out: Path, append: bool) -> int:
    """`python -m bot codes generate`: write new codes to `out` (or add them to its end with `append`)."""
    existing: list[str] = []
    if out.exists():
        if not append:
            print(
                f"{out} exists: its codes may be handed out already; --append adds codes to it",
                file=sys.stderr,
            )
            return 1
        try:
            existing = load_codes(out)
        except CodesError as exc:
            print(exc, file=sys.stderr)
            return 1
    try:
        codes = generate(count, prefix=prefix, length=length, avoid=existing)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a" if existing else "w", encoding="utf-8") as file:
        if not existing:
            file.write(f"{HEADER}\n")
        elif not out.read_text(encoding="utf-8").endswith("\n"):
            file.write("\n")
        file.writelines(f"{code}\n" for code in codes)
    print(f"{len(codes)} codes written to {out} ({len(existing) + len(codes)} in all)")
    return 0


def read_redemptions(path: Path, default_time: datetime, zone: tzinfo = UTC) -> list[tuple[str, datetime]]:
    """The (code, when) pairs of a till's export: a CSV file with a header naming a `code` column and,
    optionally, `redeemed_at` (ISO 8601; a date or a time without a zone is in `zone`). Raises CodesError
    naming the file and line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            fields = reader.fieldnames or []
    except FileNotFoundError:
        raise CodesError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CodesError(f"{path}: cannot read it: {exc}") from None
    if "code" not in fields:
        raise CodesError(f"{path}: line 1: no `code` column (the header names {', '.join(fields) or 'none'})")
    used = []
    for number, row in enumerate(rows, start=2):
        code = (row.get("code") or "").strip()
        if not code:
            raise CodesError(f"{path}: line {number}: no code")
        when = (row.get("redeemed_at") or "").strip()
        try:
            at = datetime.fromisoformat(when) if when else default_time
        except ValueError:
            raise CodesError(f"{path}: line {number}: redeemed_at {when!r} is not an ISO 8601 time") from None
        used.append((code, at if at.tzinfo else at.replace(tzinfo=zone)))
    return used
