"""The Idempotency-Key request header: one pattern, checked the same way wherever it is taken."""

from __future__ import annotations

import re

from aiohttp import web

from hub.errors import ValidationFailed

HEADER = "Idempotency-Key"
#: The pattern the OpenAPI document publishes for the header.
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{8,128}$"
_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key, None without one; ValidationFailed (422) if it breaks the pattern."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    # ASCII only: raw non-UTF-8 bytes arrive as surrogate escapes, which the pattern refuses too.
    if _KEY.fullmatch(raw) is None:
        raise ValidationFailed(f"bad {HEADER} header", {HEADER: "8-128 characters of A-Z a-z 0-9 _ . : -"})
    return raw
