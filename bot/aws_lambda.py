"""AWS Lambda entry point: `bot.aws_lambda.handler`, behind API Gateway or a Lambda function URL.

A frozen Lambda runs nothing after it has answered, so everything happens inside the invocation: Mangum
runs the app's start-up and shut-down around every request, the replies are sent before the webhook is
answered, and shutting down flushes the events to `PROMOBOT_DATA` (an `s3://` bucket). Keep the state in
PostgreSQL (`PROMOBOT_DATABASE_URL`): without it, an SQLite file in /tmp lasts only as long as the container.
"""

from __future__ import annotations

from mangum import Mangum

from bot.app import configure_logging, create_app, load_settings
from bot.config import Mode


def build_handler() -> Mangum:
    settings, _ = load_settings(Mode.LAMBDA)
    configure_logging(settings.log_level)
    return Mangum(create_app(settings), lifespan="on")


_handler: Mangum | None = None


def handler(event: dict, context: object) -> dict:
    """The function's handler; the app is built at the first invocation of a fresh container."""
    global _handler
    if _handler is None:
        _handler = build_handler()
    return _handler(event, context)
