"""Why a reply could not be delivered, as a code and its text in the staff's language.

Senders raise `PermanentError` / `TransientError` with one of these codes; the outbox keeps the
channel's own wording (in English, with the server's answer) in the log and in the
`delivery.failed` event's `error`, and staff read the code's text: `delivery.failed.<code>`.
"""

from __future__ import annotations

from hub import i18n
from hub.errors import HubError

#: Reasons a delivery failed for good; anything else is "failed".
NO_ADDRESS = "no_address"  # the contact has no address on the lead's channel
UNREACHABLE = "unreachable"  # the customer blocked the bot or deleted their account
REJECTED = "rejected"  # the channel refused this message (its content, its form)
TOO_LARGE = "too_large"
RECIPIENT_REFUSED = "recipient_refused"  # the mail server says the address does not exist
BOUNCED = "bounced"  # the mail was accepted, then returned by the customer's side
GAVE_UP = "gave_up"  # every attempt met a temporary failure
MAYBE_SENT = "maybe_sent"  # sent twice without a confirmation: it may have arrived
FAILED = "failed"

DELIVERY_FAILURES = frozenset(
    {
        NO_ADDRESS, UNREACHABLE, REJECTED, TOO_LARGE, RECIPIENT_REFUSED, BOUNCED, GAVE_UP, MAYBE_SENT, FAILED,
    }
)  # fmt: skip


#: Why a file of a delivered reply was left out of it (`delivery.left_out.<code>` for staff).
FILE_UNSUPPORTED = "unsupported"  # the channel has no way to carry a file stored like this
FILE_TOO_LARGE = "too_large"  # larger than the channel (or fetching it) allows
FILE_UNAVAILABLE = "unavailable"  # fetching the file failed
FILE_REASONS = frozenset({FILE_UNSUPPORTED, FILE_TOO_LARGE, FILE_UNAVAILABLE})


def failure_reason(exc: HubError) -> str:
    """The DELIVERY_FAILURES code of a sender's error ("failed" when it names none)."""
    return exc.code if exc.code in DELIVERY_FAILURES else FAILED


def failure_text(reason: str, language: str) -> str:
    """The plain text (no HTML) that tells staff why a reply was not delivered and what to do."""
    return i18n.text(f"delivery.failed.{reason if reason in DELIVERY_FAILURES else FAILED}", language)


def left_out_text(reason: str, language: str) -> str:
    """The plain text that tells staff why a file did not go out with a delivered reply."""
    return i18n.text(f"delivery.left_out.{reason if reason in FILE_REASONS else FILE_UNAVAILABLE}", language)
