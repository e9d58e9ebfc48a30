"""What the routes share: the runtime that the app's lifespan builds."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from bot import flow
from bot.campaign import Campaign
from bot.config import Settings
from bot.database import Database
from bot.flusher import Flusher
from bot.sender import Sender
from bot.sender_process import SenderProcess


class Sending(StrEnum):
    """Where replies are sent."""

    INLINE = "inline"  # before acknowledging: the host freezes the process once it has answered (Lambda)
    TASK = "task"  # by a task of this process (local mode's stand-in Graph API; a transport given by tests)
    PROCESS = "process"  # by `python -m bot.sender_process`: off the event loop that acknowledges webhooks


@dataclass
class Runtime:
    """What the routes share, built by the lifespan."""

    settings: Settings
    campaign: Campaign
    database: Database
    sender: Sender  # sends in this process on Lambda (inline) and in local mode (task)
    sending: Sending
    flusher: Flusher
    images: dict[str, Path]  # the local thank-you images served under /media/, by name
    rules: flow.PageRules  # opt-out and opt-in words, the bot's app id, the takeover's pause
    sender_process: SenderProcess | None = None  # sends for a server (Sending.PROCESS)

    def replies_owed(self) -> None:
        """Tell the sender that replies were recorded, where one runs beside this process (on Lambda the
        webhook sends them itself, and a scheduled invocation sends what is left)."""
        if self.sending is Sending.TASK:
            self.sender.wake()
        elif self.sender_process is not None:
            self.sender_process.wake()
