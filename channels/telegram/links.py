"""Signed deep links `t.me/<bot>?start=<token>` that continue a lead in Telegram.

The token names the lead and carries an HMAC over (lead, contact) with the hub's secret,
so opening it links that Telegram account to exactly that contact, and nobody can forge
a link to someone else's lead. Start parameters allow 64 chars of [A-Za-z0-9_-].
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_TOKEN = re.compile(r"^L(\d{1,12})_([A-Za-z0-9_-]{16})$")


def _signature(secret: str, lead_number: int, contact_id: str) -> str:
    digest = hmac.new(
        secret.encode("utf-8"), f"tg-link:{lead_number}:{contact_id}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:16]


def make_token(secret: str, lead_number: int, contact_id: str) -> str:
    """The start parameter for one lead of one contact."""
    return f"L{lead_number}_{_signature(secret, lead_number, contact_id)}"


def token_lead(token: str) -> tuple[int, str] | None:
    """(lead number, signature) from a start parameter, or None if it is not one of ours."""
    match = _TOKEN.match(token.strip())
    return (int(match.group(1)), match.group(2)) if match else None


def verify(secret: str, lead_number: int, contact_id: str, signature: str) -> bool:
    """True when the signature was made by this hub for this lead and contact."""
    return hmac.compare_digest(_signature(secret, lead_number, contact_id), signature)


def deep_link(bot_username: str, token: str) -> str:
    """`https://t.me/<bot>?start=<token>`."""
    return f"https://t.me/{bot_username.lstrip('@')}?start={token}"
