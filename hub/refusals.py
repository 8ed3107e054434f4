"""Why the core refused a staff action, as a code and its text in the staff's language.

The code is the raised `HubError.code`; its text is `dash.error.<code>` in hub/locales, so the
dashboard, Telegram and any other staff channel say the same thing for the same refusal.
"""

from __future__ import annotations

from hub import i18n
from hub.errors import HubError

#: Reasons the core names and every staff channel can tell in words; anything else is "failed".
REFUSALS = frozenset(
    {
        "empty_text", "too_long", "no_manager", "no_lead", "already_resolved", "already_open",
        "already_spam", "closed", "reply_erased", "invalid", "conflict", "failed",
    }
)  # fmt: skip


def refusal_code(exc: HubError) -> str:
    """The REFUSALS code of `exc` ("failed" when its reason has no text of its own)."""
    return exc.code if exc.code in REFUSALS else "failed"


def refusal_text(code: str, language: str) -> str:
    """The plain text (no HTML) that tells staff why an action was refused."""
    return i18n.text(f"dash.error.{code if code in REFUSALS else 'failed'}", language)
