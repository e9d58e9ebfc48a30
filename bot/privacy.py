"""Forgetting a customer: their rows leave the transactional store and the event files, at once.

`forget` carries it out; `request` records a deletion request with its confirmation code, `process_pending`
carries out those due, and `status_page` tells what was deleted and when, never whose it was.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from bot.database import Database, DatabaseError
from bot.deletions import (
    DeletionRequest,
    add_deletion_request,
    finish_deletion_request,
    forget_customer,
    pending_deletion_requests,
)
from bot.rows import CUSTOMER_REASON, RequestStatus, deletion_code
from bot.store import FileStore, files_naming, rewrite_without

log = logging.getLogger(__name__)

# How long `forget` waits for a flusher already writing a batch with the customer's events to finish it:
# that file is written from the batch the flusher read before the rows were deleted. Past this, a batch
# still pending is written later from the store, without them.
SETTLE_S = 15.0
_POLL_S = 0.1
_SCANS = 3  # scans of the event files before `forget` gives up (each after rewriting what the last found)
# Rewrites of this process one at a time: two rewriting one file for two customers would each keep the
# other's rows.
_REWRITING = threading.Lock()


class Reason(StrEnum):
    """Who asked for a customer's data to be deleted."""

    META_CALLBACK = "meta_callback"  # Meta's data deletion callback (the person removed the app)
    CUSTOMER = CUSTOMER_REASON  # the customer, in the conversation (recorded with their words' events)
    OPERATOR = "operator"  # the business, from the command line


# What the counts of a removal mean, for people (the command line, the status page), in order.
REMOVED_LABELS = {
    "events": "events not yet written to the event files",
    "outbox": "replies owed",
    "customers": "customer records (messaging window, opt-out, hand-over)",
    "seen": "marks of messages received",
    "codes": "single-use codes handed out, no longer naming their customer",
    "file_rows": "events in the event files",
    "files": "event files rewritten",
}


@dataclass(frozen=True, slots=True)
class Removal:
    """What `forget` removed: rows per table of the transactional store, rows and files of the event store."""

    rows: dict[str, int]
    file_rows: int
    files: int

    @property
    def total(self) -> int:
        """How many rows named the customer (0: nothing was kept under that id)."""
        return sum(self.rows.values()) + self.file_rows

    def counts(self) -> dict[str, int]:
        return {**self.rows, "file_rows": self.file_rows, "files": self.files}


def forget(
    database: Database,
    files: FileStore,
    customer_id: str,
    *,
    settle_s: float = SETTLE_S,
    after_file: Callable[[str], None] | None = None,
) -> Removal:
    """Remove the customer from the transactional store and from every event file.

    Parameters: `customer_id` the page-scoped id; `settle_s` how long to wait for a flush under way of
    their buffered events (see SETTLE_S); `after_file` called with each file's path once it is replaced.
    Returns: what was removed by this call (all zero when there was nothing left).
    Raises: DatabaseError, OSError: what was done stays done, and a rerun finishes the rest.
    """
    forgotten = forget_customer(database, customer_id)
    deadline = time.monotonic() + settle_s
    while database.unflushed(forgotten.batches) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    file_rows = rewritten = 0
    with _REWRITING:
        # Until a scan finds none: a compaction that read a file before it was rewritten may write their
        # rows again into its merged file.
        for _ in range(_SCANS):
            naming = files_naming(files, customer_id)
            if not naming:
                break
            for relative in naming:
                removed = rewrite_without(files, relative, customer_id)
                if removed:
                    file_rows += removed
                    rewritten += 1
                    if after_file is not None:
                        after_file(relative)
        else:
            raise OSError(f"event files in {files.data} still held the customer's rows after {_SCANS} scans")
    return Removal(forgotten.rows, file_rows, rewritten)


def request(database: Database, customer_id: str, reason: Reason) -> str:
    """Record a request to delete the customer's data, for `process_pending`; returns its confirmation code.
    Blocking (one short transaction). Raises: DatabaseError."""
    code = deletion_code()
    add_deletion_request(database, code, str(reason), customer_id)
    return code


def process_pending(
    database: Database, files: FileStore, *, settle_s: float = SETTLE_S, older_than: timedelta = timedelta(0)
) -> int:
    """Carry out every pending deletion request made at least `older_than` ago, oldest first; returns how many
    were done. A request that fails stays pending (logged) for the next call. Blocking: the event files are
    read and rewritten."""
    done = 0
    for code, customer_id in pending_deletion_requests(database, before=database.clock() - older_than):
        try:
            removal = forget(database, files, customer_id, settle_s=settle_s)
        except (DatabaseError, OSError) as exc:
            log.error("deletion request %s failed, to be tried again: %s", code, exc)
            continue
        status = RequestStatus.DONE if removal.total else RequestStatus.NOT_FOUND
        finish_deletion_request(database, code, status, json.dumps(removal.counts()))
        log.info("deletion request %s done: %d rows removed", code, removal.total)
        done += 1
    return done


# -- Meta's data deletion callback ---------------------------------------------------------------------------


class InvalidSignedRequest(ValueError):
    """A `signed_request` that is malformed or not signed with the app secret."""


def read_signed_request(signed_request: str, app_secret: str) -> dict[str, object]:
    """The payload of Meta's `signed_request` (`<signature>.<payload>`, both base64url without padding;
    the signature an HMAC-SHA256 of the encoded payload with the app secret), once its signature is checked.
    Raises: InvalidSignedRequest (malformed, bad signature, another algorithm, no `user_id`)."""
    signature, dot, payload = signed_request.strip().partition(".")
    if not dot or not signature or not payload:
        raise InvalidSignedRequest("signed_request is not <signature>.<payload>")
    try:
        given = _unpadded_b64decode(signature)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSignedRequest(f"signed_request does not decode: {exc}") from None
    # The signature first: the payload of a request anyone can post is not parsed until it is Meta's.
    expected = hmac.new(app_secret.encode(), payload.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(given, expected):
        raise InvalidSignedRequest("signed_request is not signed with the app secret")
    try:
        document = json.loads(_unpadded_b64decode(payload))
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise InvalidSignedRequest(f"signed_request does not decode: {exc}") from None
    if not isinstance(document, dict) or str(document.get("algorithm", "")).upper() != "HMAC-SHA256":
        raise InvalidSignedRequest("signed_request does not use HMAC-SHA256")
    if not isinstance(document.get("user_id"), str | int) or not str(document["user_id"]):
        raise InvalidSignedRequest("signed_request names no user_id")
    return document


def _unpadded_b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_request(payload: Mapping[str, object], app_secret: str) -> str:
    """A `signed_request` as Meta makes it (for tests and the simulator)."""
    encoded = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    signature = hmac.new(app_secret.encode(), encoded.encode(), hashlib.sha256).digest()
    return f"{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}.{encoded}"


STATUS_PATH = "/privacy/deletion/"  # + the confirmation code: the request's status page

_STATUS_WORDS = {
    RequestStatus.PENDING: "Received; the deletion is under way.",
    RequestStatus.DONE: "Done: the data below was deleted.",
    # Meta's callback names a person by their app-scoped id, Messenger's conversations by their page-scoped
    # id, and no call of the platform maps one to the other for a person who never logged into the app.
    RequestStatus.NOT_FOUND: (
        "Done: nothing was kept under the id this request named. This bot knows the people who write to "
        "the page by the id Messenger gives them for that page; a request made from Facebook's settings "
        "names people by another id. To delete what the bot kept of a conversation, ask for it in that "
        "conversation on Messenger, or ask the business."
    ),
}


def status_page(found: DeletionRequest | None) -> str:
    """The HTML status page of a deletion request: when it was received, where it stands, what was deleted
    and when; nothing of whose it is. `found` None: no such request."""
    if found is None:
        body = "<p>No deletion request has this confirmation code.</p>"
        title = "Deletion request not found"
    else:
        title = f"Deletion request {html.escape(found.code)}"
        when = found.done_at.strftime("%Y-%m-%d %H:%M UTC") if found.done_at is not None else None
        counts = json.loads(found.removed) if found.removed else {}
        items = "".join(
            f"<li>{html.escape(label)}: {int(counts[key])}</li>"
            for key, label in REMOVED_LABELS.items()
            if counts.get(key)
        )
        body = (
            f"<p>Received {found.requested_at.strftime('%Y-%m-%d %H:%M UTC')}.</p>"
            f"<p>{html.escape(_STATUS_WORDS[found.status])}</p>"
            + (f"<p>Completed {when}.</p>" if when else "")
            + (f"<ul>{items}</ul>" if items else "")
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title></head><body><h1>{title}</h1>{body}</body></html>"
    )


# -- the command line ----------------------------------------------------------------------------------------


def forget_command(customer_id: str, *, yes: bool, answer: Callable[[str], str] = input) -> int:
    """`python -m bot forget PSID [--yes]`: asks first unless `yes`, then prints what was removed."""

    from bot.config import ConfigError
    from bot.migrations import MigrationError
    from bot.startup import command_settings, file_store, open_database

    try:
        settings = command_settings()
    except ConfigError as exc:
        print(f"promobot forget: {exc}")
        return 2
    if not yes:
        try:
            reply = answer(
                f"Delete everything promobot keeps of customer {customer_id} (in {settings.data} and its "
                "transactional store)? This cannot be undone. [y/N] "
            )
        except EOFError:  # no one to answer (input closed, a script without --yes): no
            reply = ""
        if reply.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    try:
        database = open_database(settings)
    except (DatabaseError, MigrationError) as exc:
        print(f"promobot forget: {exc}")
        return 1
    try:
        removal = forget(database, file_store(settings), customer_id)
    except (DatabaseError, OSError) as exc:
        print(f"promobot forget: stopped, run it again to finish: {exc}")
        return 1
    finally:
        database.close()
    for key, label in REMOVED_LABELS.items():
        print(f"{removal.counts().get(key, 0):>8}  {label}")
    if not removal.total:
        print("nothing was kept under this id")
    return 0


__all__ = [
    "InvalidSignedRequest",
    "Reason",
    "Removal",
    "forget",
    "forget_command",
    "process_pending",
    "read_signed_request",
    "request",
    "status_page",
]
