"""Errors the core raises; adapters translate them at the edge (HTTP status, bot reply)."""

from __future__ import annotations


class HubError(Exception):
    """Base of the hub's own errors; `code` names the reason for staff (see hub/refusals.py)."""

    code = "failed"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class NotFoundError(HubError):
    """The lead, manager or form named does not exist."""

    # What a staff action misses is its lead; forms and inbox items are API-only.
    code = "no_lead"


class ValidationFailed(HubError):
    """Input is malformed; `fields` maps each bad field to what is wrong with it."""

    code = "invalid"

    def __init__(
        self, message: str, fields: dict[str, str] | None = None, *, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.fields = fields or {}


class IdempotencyKeyReused(ValidationFailed):
    """An idempotency key already recorded a different request (the IETF Idempotency-Key draft's
    422); nothing is stored."""


class ConflictError(HubError):
    """The action does not fit the lead's current state (e.g. resolving a closed lead)."""

    code = "conflict"


class ContactErased(ConflictError):
    """A reply to a lead whose contact was erased: there is nobody left to deliver it to."""

    code = "reply_erased"


class DecodeError(HubError):
    """Raw input cannot become an `Inbound`; it is quarantined with this reason."""


class TransientError(HubError):
    """Try again later: a server is down, a rate limit applies, a connection dropped."""

    def __init__(self, message: str, retry_after: float | None = None, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class PermanentError(HubError):
    """Retrying cannot help (address rejected, chat blocked the bot): report it once."""


class UncertainDelivery(TransientError):
    """The message went out but its acceptance was never confirmed (e.g. SMTP dropped after DATA).

    The outbox retries such a row at most once (with the same Message-ID, so the receiver can
    tell the copies apart), then marks it failed as "may have been delivered" for staff.
    """
