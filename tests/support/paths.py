"""Where the repository, the test data and the real Messenger payloads are."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
TEST_DATA = REPO / "tests" / "data"
# Real Messenger payloads (webhook bodies, and Send API bodies in send/); see their SOURCES.md.
MESSENGER_FIXTURES = TEST_DATA / "messenger"
