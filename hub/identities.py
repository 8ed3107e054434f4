"""Normalizing identities so the same person is recognized across channels."""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers
from email_validator import EmailNotValidError, validate_email

# No whitespace or control characters anywhere: addresses go into mail headers.
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f-\x9f<>()\[\],;:\"\\]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]{2,}\Z")
_USERNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{3,31}$")
#: An ASCII dot-atom local part (RFC 5322 atext), the form nearly every address has.
_ASCII_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_PHONE_CHARS = re.compile(r"\+?[\d \t\u00a0().-]{7,25}")  # no line breaks
_UA_INTERNATIONAL = re.compile(r"380([1-9]\d{8})")
_UA_NATIONAL = re.compile(r"(?:00380|380|0)([1-9]\d{8})")
#: Where a number typed without a country code is assumed to be (customers write `067 123 45 67`).
DEFAULT_PHONE_REGION = "UA"


def normalize_email(value: str) -> str | None:
    """Lower-cased address, or None when it is not a plausible single address."""
    value = value.strip()
    if len(value) > 254 or not _EMAIL.match(value):
        return None
    local, _, domain = value.rpartition("@")
    return f"{local}@{domain.lower()}".lower()


def normalize_typed_email(value: str) -> str | None:
    """An address a person typed (form, API, chat), checked strictly; None when invalid.

    Mail headers keep the lenient `normalize_email`: a sender whose mail arrived is reachable
    whatever the RFCs say about their address."""
    value = value.strip()
    if len(value) > 254:
        return None
    local, at, domain = value.rpartition("@")
    if at and len(local) <= 64 and _ASCII_LOCAL.match(local):
        # The common case: the library's checks of a domain cost ~50 µs and depend on the
        # domain alone, and customers share a few domains, so they are done once per domain.
        ascii_domain = _checked_domain(domain.lower())
        address = f"{local}@{ascii_domain}" if ascii_domain else ""
    else:
        try:
            checked = validate_email(value, check_deliverability=False)
        except EmailNotValidError:
            return None
        # The ASCII (IDNA) domain is what mail headers carry, so both channels name one contact.
        address = f"{checked.local_part}@{checked.ascii_domain}"
    return address.lower() if _EMAIL.match(address) else None


@lru_cache(maxsize=4096)
def _checked_domain(domain: str) -> str | None:
    """The domain's ASCII (IDNA) form if email-validator accepts it, else None."""
    try:
        return validate_email(f"x@{domain}", check_deliverability=False).ascii_domain
    except EmailNotValidError:
        return None


def normalize_phone(value: str, region: str = DEFAULT_PHONE_REGION) -> str | None:
    """`067 123 45 67`, `+380 (67) 123-45-67`, `00380...` -> `+380671234567` (E.164); None
    when it is not a valid number. Numbers without a country code are read as `region`'s."""
    value = value.strip()
    if not _PHONE_CHARS.fullmatch(value):
        return None
    digits = re.sub(r"\D", "", value)
    if region == "UA" and not value.startswith("+") and re.fullmatch(r"80\d{9}", digits):
        # The old trunk prefix: many still write 8 067 123 45 67 for 067 123 45 67.
        value = digits[1:]
    number = _ukrainian(value, digits, region)
    if number is None:
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            return None
    # Valid, not just possible: a digit too few or too many makes a contact nobody can call.
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def renormalized_phone(stored: str) -> str | None:
    """The value a phone identity stored before 2026-12-02 has under `normalize_phone`, or None
    when it needs no rewrite (or cannot be read).

    The old code stored `+` and the digits as typed, so the national forms a customer types
    (`067…`, `8 067…`, `00380 67…`) became `+0671234567`, `+80671234567`, `+00380671234567`:
    those are read again as typed without the `+`. A value valid as it stands (`+380…`,
    `+44…`) is left alone, and so is anything else, which a person has to look at."""
    if not stored.startswith(("+0", "+8")) or normalize_phone(stored) == stored:
        return None
    fresh = normalize_phone(stored[1:])
    return fresh if fresh != stored else None


def _ukrainian(value: str, digits: str, region: str) -> phonenumbers.PhoneNumber | None:
    """A Ukrainian number in one of its usual forms, without `phonenumbers.parse` (~26 µs, most of
    a form's phone check); None for anything else, which the parser reads."""
    if value.startswith("+"):
        match = _UA_INTERNATIONAL.fullmatch(digits)
    elif region == "UA":
        match = _UA_NATIONAL.fullmatch(digits)
    else:
        return None
    if match is None:
        return None
    return phonenumbers.PhoneNumber(country_code=380, national_number=int(match.group(1)))


def normalize_telegram_username(value: str) -> str | None:
    """`@Olena_K` or `t.me/Olena_K` -> `olena_k`; None when not a valid username."""
    value = value.strip()
    value = re.sub(r"^(?:https?://)?t\.me/", "", value).lstrip("@")
    return value.lower() if _USERNAME.match(value) else None
