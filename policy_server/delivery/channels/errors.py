"""How a channel says a delivery failed, and whether trying again can help."""

from __future__ import annotations


class DeliveryError(Exception):
    """A notice could not be delivered through a channel.

    ``temporary`` tells the worker whether a retry may succeed; ``retry_after`` is the delay in
    seconds the peer asked for, if it said so; ``status`` is the peer's HTTP status, if any.
    """

    temporary: bool = True

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class TemporaryDeliveryError(DeliveryError):
    """Try again later (after ``retry_after`` seconds when the peer asked for a delay)."""

    temporary = True


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help; the notice goes to the dead letter now."""

    temporary = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message, retry_after=None, status=status)
