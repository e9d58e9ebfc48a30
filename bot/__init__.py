"""promobot's bot: the Messenger webhook, the coupon conversation, and the durable event log."""

__version__ = "0.1.0"
