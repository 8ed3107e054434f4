"""Normalizing identities so the same person is recognized across channels."""

from __future__ import annotations

import re

from hub.domain import Identity, IdentityKind

# No whitespace or control characters anywhere: addresses go into mail headers.
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f-\x9f<>()\[\],;:\"\\]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]{2,}\Z")
_USERNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{3,31}$")


def normalize_email(value: str) -> str | None:
    """Lower-cased address, or None when it is not a plausible single address."""
    value = value.strip()
    if len(value) > 254 or not _EMAIL.match(value):
        return None
    local, _, domain = value.rpartition("@")
    return f"{local}@{domain.lower()}".lower()


def normalize_phone(value: str) -> str | None:
    """`+380 (67) 123-45-67` -> `+380671234567`; None unless 7-15 digits remain (E.164)."""
    value = value.strip()
    if not re.fullmatch(r"\+?[\d\s().-]{7,25}", value):
        return None
    digits = re.sub(r"\D", "", value)
    if not 7 <= len(digits) <= 15:
        return None
    return "+" + digits


def normalize_telegram_username(value: str) -> str | None:
    """`@Olena_K` or `t.me/Olena_K` -> `olena_k`; None when not a valid username."""
    value = value.strip()
    value = re.sub(r"^(?:https?://)?t\.me/", "", value).lstrip("@")
    return value.lower() if _USERNAME.match(value) else None


def identity(kind: IdentityKind, value: str, display_name: str = "") -> Identity | None:
    """A normalized identity, or None when the value is not valid for its kind."""
    normalized: str | None
    if kind == IdentityKind.EMAIL:
        normalized = normalize_email(value)
    elif kind == IdentityKind.PHONE:
        normalized = normalize_phone(value)
    elif kind == IdentityKind.TELEGRAM_USERNAME:
        normalized = normalize_telegram_username(value)
    else:
        normalized = value.strip() or None
    return Identity(kind, normalized, display_name) if normalized else None
