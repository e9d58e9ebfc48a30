"""Counts in words, as people write them: "1 customer", "2,500 customers"."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`n` with thousands separators and `noun`, in the plural (`plural`, or `noun` + "s") unless `n` is 1."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
