"""The AWS Lambda entry point, `bot.aws_lambda.handler`.

Behind API Gateway or a function URL; invoked on a schedule by an EventBridge rule, it sends what was left
owed (docs/design.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mangum import Mangum
from mangum.types import LambdaContext, LambdaEvent
from starlette.applications import Starlette

from bot.app import create_app
from bot.config import Mode
from bot.startup import configure_logging, load_settings

log = logging.getLogger("promobot")

SCHEDULED_SOURCE = "aws.events"  # the `source` of every event an EventBridge rule sends


def build_handler() -> Mangum:
    """The app in Lambda mode, wrapped for API Gateway and function URL events."""
    settings, _ = load_settings(Mode.LAMBDA)
    configure_logging(settings.log_level)
    return Mangum(create_app(settings), lifespan="on")


def is_scheduled(event: LambdaEvent) -> bool:
    """Whether `event` comes from an EventBridge rule (a schedule) rather than an HTTP request."""
    return event.get("source") == SCHEDULED_SOURCE


async def send_owed(app: Starlette) -> dict[str, int]:
    """Run the app's start-up, send every reply due, then its shut-down (which flushes the events).

    Returns: `{"replies_owed": n}`, the replies still owed (leased by a running invocation, or to be retried).
    Raises: DatabaseError (the store cannot be reached): the invocation fails, the next one tries again.
    """
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        await runtime.sender.send_due()
        owed: int = await asyncio.to_thread(runtime.database.owed)
    if owed:
        log.info("%d replies still owed; the next scheduled invocation sends those due by then", owed)
    return {"replies_owed": owed}


_handler: Mangum | None = None


def handler(event: LambdaEvent, context: LambdaContext) -> dict[str, Any]:
    """The function's handler; the app is built at the first invocation of a fresh container."""
    global _handler
    if _handler is None:
        _handler = build_handler()
    if is_scheduled(event):
        app = _handler.app
        assert isinstance(app, Starlette)  # the app build_handler wrapped
        # Mangum set up this loop when it was built, and runs every request on it.
        return asyncio.get_event_loop().run_until_complete(send_owed(app))
    return _handler(event, context)
