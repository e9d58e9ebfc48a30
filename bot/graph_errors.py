"""How a Graph API call fails: the platform's error codes, the error classes, and the retry policy."""

from __future__ import annotations

from dataclasses import dataclass

# The Graph API's "slow down" codes: 4 / 17 / 32 / 613, and 80001 / 80006 (the Pages and Messenger business
# use case limits, which page tokens count against).
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80001, 80006})
# Worth retrying: those; 1 unknown, 2 service unavailable, 1200 the Send API's "temporary send message
# failure".
TRANSIENT_CODES = RATE_LIMIT_CODES | {1, 2, 1200}
TOKEN_INVALID = 190


class SendError(Exception):
    """A Graph API call that did not succeed; `code`/`subcode` are the platform's when it gave them."""

    def __init__(self, reason: str, *, code: int | None = None, subcode: int | None = None, transient: bool):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.subcode = subcode
        self.transient = transient

    def gave_up(self, attempts: int) -> SendError:
        """The same failure, its reason saying after how many attempts the call was given up."""
        kind = TransientSendError if self.transient else PermanentSendError
        error = kind(
            f"{self.reason} (gave up after {attempts} attempts)", code=self.code, subcode=self.subcode
        )
        error.__cause__ = self.__cause__
        return error


class PermanentSendError(SendError):
    def __init__(self, reason: str, *, code: int | None = None, subcode: int | None = None):
        super().__init__(reason, code=code, subcode=subcode, transient=False)


class TransientSendError(SendError):
    def __init__(self, reason: str, *, code: int | None = None, subcode: int | None = None):
        super().__init__(reason, code=code, subcode=subcode, transient=True)


@dataclass(frozen=True)
class RetryPolicy:
    deadline_s: float = 20.0  # give up on a message after this long, all attempts together
    first_backoff_s: float = 0.25
    max_backoff_s: float = 4.0
    request_timeout_s: float = 5.0  # one attempt, connect to last byte
    # The platform asked to slow down: no call of the client goes out for this long, doubling while it keeps
    # asking (its advice: pause until the usage drops), back to the first once a call gets through.
    first_hold_s: float = 1.0
    max_hold_s: float = 60.0
