"""How typed phone numbers and addresses become identities: one person, one value."""

from __future__ import annotations

import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.identities import normalize_email, normalize_phone, normalize_typed_email, renormalized_phone


@pytest.mark.parametrize(
    "typed",
    [
        "+380 67 123 45 67",
        "+38 (067) 123-45-67",
        "067 123 45 67",
        "(067) 123-45-67",
        "0671234567",
        "380671234567",
        "00380671234567",
        "8 067 123 45 67",
        " 067-123-45-67 ",
    ],
)
def test_ukrainian_numbers_in_every_usual_form_are_one_number(typed: str) -> None:
    assert normalize_phone(typed) == "+380671234567"


@pytest.mark.parametrize(
    ("typed", "e164"),
    [
        ("044 123 45 67", "+380441234567"),
        ("+48 601 234 567", "+48601234567"),
        ("+1 (415) 555-2671", "+14155552671"),
        ("0048 601 234 567", "+48601234567"),
    ],
)
def test_landlines_and_foreign_numbers_keep_their_country(typed: str, e164: str) -> None:
    assert normalize_phone(typed) == e164


def test_a_number_is_read_in_the_given_region() -> None:
    assert normalize_phone("601 234 567", region="PL") == "+48601234567"


@pytest.mark.parametrize(
    "typed",
    [
        "(((((((1234567",  # punctuation around too few digits
        "1234567",
        "+380 67 123 45 6",  # a digit short
        "+380 67 123 45 678",  # a digit too many
        "067 123 45 67 ext 5",
        "067\r\n1234567",
        "+380671234567; DROP",
        "",
    ],
)
def test_numbers_nobody_could_call_are_refused(typed: str) -> None:
    assert normalize_phone(typed) is None


@pytest.mark.parametrize(
    "typed",
    [
        "a@-.co",
        "a@..co",
        "a@.example.com",
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        "x@localhost",
    ],
)
def test_typed_addresses_that_no_mail_server_takes_are_refused(typed: str) -> None:
    assert normalize_typed_email(typed) is None


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("Olena.K+tag@Example.COM", "olena.k+tag@example.com"),
        ("  olena@example.com ", "olena@example.com"),
        ("олена@example.com", "олена@example.com"),
        # An internationalized domain is stored as mail headers carry it (IDNA).
        ("o@приклад.укр", "o@xn--80aikifvh.xn--j1amh"),
    ],
)
def test_typed_addresses_are_stored_as_mail_carries_them(typed: str, stored: str) -> None:
    assert normalize_typed_email(typed) == stored


@pytest.mark.parametrize(
    "typed", ["a@b.co\r\nBcc: x@evil.example", "a b@example.com", '"a"@example.com', "a<b>@x.co"]
)
def test_typed_addresses_never_carry_header_syntax(typed: str) -> None:
    assert normalize_typed_email(typed) is None


def test_mail_headers_keep_the_lenient_check() -> None:
    # Such an address breaks the RFC, but mail from it arrived: its sender must stay reachable.
    assert normalize_email("a..b@example.com") == "a..b@example.com"


def _library_only(value: str) -> str | None:
    """What normalize_typed_email answers without its per-domain shortcut."""
    value = value.strip()
    if len(value) > 254:
        return None
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        return None
    address = f"{checked.local_part}@{checked.ascii_domain}"
    return address.lower() if normalize_email(address) == address.lower() else None


_ADDRESS_CHARS = st.sampled_from([*"abcXYZ019.-_+'@!{}~", "а", "ї", "@", "."])


@settings(max_examples=400, deadline=None)
@given(st.emails() | st.text(_ADDRESS_CHARS, max_size=30))
def test_the_per_domain_shortcut_answers_as_the_library_does(value: str) -> None:
    assert normalize_typed_email(value) == _library_only(value)


def _parser_only(value: str, region: str) -> str | None:
    """What normalize_phone answers with phonenumbers.parse alone."""
    value = value.strip()
    digits = "".join(c for c in value if c.isdigit())
    if region == "UA" and not value.startswith("+") and len(digits) == 11 and digits.startswith("80"):
        value = digits[1:]
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_PREFIXES = st.sampled_from(["+380", "380", "00380", "0", "+38 0", "8 0", "+48", "", "+3800", "+1"])
_SEPARATORS = st.sampled_from(["", " ", "-", "(", ")", "."])


@settings(max_examples=500, deadline=None)
@given(
    _PREFIXES,
    st.lists(st.tuples(_SEPARATORS, st.integers(0, 9)), min_size=7, max_size=11),
    st.sampled_from(["UA", "PL"]),
)
def test_the_ukrainian_shortcut_answers_as_the_parser_does(
    prefix: str, parts: list[tuple[str, int]], region: str
) -> None:
    typed = prefix + "".join(f"{sep}{digit}" for sep, digit in parts)
    if normalize_phone(typed, region) is not None or _parser_only(typed, region) is not None:
        assert normalize_phone(typed, region) == _parser_only(typed, region), typed


@pytest.mark.parametrize(
    ("stored", "now"),
    [
        ("+0671234567", "+380671234567"),  # typed 067 123 45 67
        ("+80671234567", "+380671234567"),  # typed 8 067 123 45 67
        ("+00380671234567", "+380671234567"),  # typed 00380 67 123 45 67
        ("+380671234567", None),  # right already
        ("+442079460958", None),  # valid abroad
        ("+8613812345678", None),  # valid abroad, starts like the trunk prefix
        ("+0123", None),  # unreadable either way: a person has to look
        ("+4412", None),
    ],
)
def test_an_old_form_phone_is_read_again_as_typed(stored: str, now: str | None) -> None:
    assert renormalized_phone(stored) == now
