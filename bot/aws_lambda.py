"""AWS Lambda entry point: `bot.aws_lambda.handler`, behind API Gateway or a Lambda function URL.

A frozen Lambda runs nothing after it has answered, so everything happens inside the invocation: Mangum
runs the app's start-up and shut-down around every request, the replies are sent before the webhook is
answered, and shutting down flushes the events to the store (use an `s3://` PROMOBOT_DATA: the write-ahead
log lives in /tmp, which is not kept).
"""

from __future__ import annotations

import os

from mangum import Mangum

from bot.app import configure_logging, create_app, load_settings
from bot.config import Mode
from bot.graph import RetryPolicy

# Replies are sent before the webhook is answered, and Messenger expects the answer within 5 seconds.
_INLINE_RETRY = RetryPolicy(deadline_s=3.0, request_timeout_s=1.5, first_backoff_s=0.1, max_backoff_s=1.0)


def build_handler() -> Mangum:
    os.environ.setdefault("PROMOBOT_WAL", "/tmp/promobot-wal")  # noqa: S108 - Lambda's only writable disk
    settings, _ = load_settings(Mode.LAMBDA)
    configure_logging(settings.log_level)
    app = create_app(settings, inline_replies=True, retry=_INLINE_RETRY, owed_from_store=False)
    return Mangum(app, lifespan="on")


_handler: Mangum | None = None


def handler(event: dict, context: object) -> dict:
    """The function's handler; the app is built at the first invocation of a fresh container."""
    global _handler
    if _handler is None:
        _handler = build_handler()
    return _handler(event, context)
