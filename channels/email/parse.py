"""Raw RFC 822 bytes -> what the hub needs to know about one email.

Parsing happens here and nowhere else (the core never sees MIME). The stdlib `email` package
does the MIME work; this module adds what real mail needs on top:
charset fallbacks for mislabeled and 8-bit bodies and headers (windows-1251, koi8-r and
iso-8859-5 are common in our customers' mail), automatic-mail detection (RFC 3834), delivery
status notifications (RFC 3464), and attachment extraction.
"""

from __future__ import annotations

import codecs
import email
import email.policy
import hashlib
import html as html_lib
import itertools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from email.errors import MessageError
from email.header import Header, decode_header
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from email.utils import collapse_rfc2231_value, getaddresses
from typing import Any

from icalendar import Calendar, Component

from hub.errors import DecodeError
from hub.identities import normalize_email
from hub.subjects import LEAD_TOKEN, REPLY_PREFIX
from hub.subjects import clean_subject as clean_subject  # re-exported: the mail modules use it

from .text import html_to_text, sanitize_html

log = logging.getLogger(__name__)

_MSGID = re.compile(r"<([^<>\s]{1,500})>")
_CHARSET_ALIASES = {
    "win-1251": "cp1251",
    "windows1251": "cp1251",
    "cp-1251": "cp1251",
    "x-cp1251": "cp1251",
    "koi8r": "koi8_r",
    "koi8": "koi8_r",
    "x-mac-cyrillic": "mac_cyrillic",
    "unknown-8bit": "",
    "x-unknown": "",
    "default": "",
}
MAX_REFS = 50
# Local parts of the senders of bounces.
_DAEMONS = ("mailer-daemon", "postmaster")

# Errors the stdlib raises on mail it cannot make sense of; anything else is a bug of ours.
PARSE_ERRORS = (MessageError, ValueError, TypeError, LookupError, IndexError, AttributeError, UnicodeError)


@dataclass(frozen=True, slots=True)
class RawAttachment:
    name: str
    content_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(slots=True)
class Bounce:
    """A delivery status notification: which of our messages failed, for whom, and why."""

    original_ids: list[str]
    recipients: list[str]
    status: str
    diagnostic: str
    # False for a notice that delivery is only delayed (Action: delayed, a 4.x.x status) or
    # went through (relayed, delivered, expanded): the MTA still tries, nothing failed yet.
    failed: bool = True


@dataclass(slots=True)
class ParsedEmail:
    sender: str
    sender_name: str
    recipients: list[str]
    subject: str
    message_id: str
    thread_ids: list[str]
    lead_number: int | None
    text: str
    html: str
    attachments: list[RawAttachment] = field(default_factory=list)
    automatic: str = ""  # why this mail is automatic (never acknowledged); empty for a person
    bounce: Bounce | None = None
    content_language: str = ""


_ADDRESS = re.compile(r"[^\s<>()\[\],;:\"']+@[^\s<>()\[\],;:\"']+")
# Control characters (CR/LF above all) and Unicode line breaks: a decoded encoded word may
# carry them, and a name or subject with them would inject headers into our replies.
_CONTROL = re.compile(r"\s*[\x00-\x1f\x7f-\x9f\u2028\u2029]+\s*")


def one_line(text: str) -> str:
    """Text safe to put into a header: control characters and line breaks become one space."""
    return _CONTROL.sub(" ", text or "").strip()


def redact(text: str) -> str:
    """Text with email addresses replaced, for log lines at INFO and above."""
    return _ADDRESS.sub("<address>", text)


def message_ids(value: str) -> list[str]:
    """Every `<id>` in a Message-ID / In-Reply-To / References value, without the brackets."""
    found = _MSGID.findall(value or "")
    if not found and value and value.strip() and " " not in value.strip():
        # Some senders omit the brackets; a single bare token is still an id.
        found = [value.strip()]
    return list(dict.fromkeys(found))


def lead_token(subject: str) -> int | None:
    """The lead number of a `[#L-1042]` token in a subject, if any."""
    match = LEAD_TOKEN.search(subject or "")
    return int(match.group(1)) if match else None


def has_reply_prefix(subject: str) -> bool:
    """Whether a subject starts with a reply or forward prefix (`Re:`, `Відп:`, `Fwd:`)."""
    return bool(REPLY_PREFIX.match(subject or ""))


# Outlook in Ukrainian and Russian forwards as "ПЕРЕСЛ:".
_FORWARD_PREFIX = re.compile(r"^\s*(fw|fwd|wg|пересл)\s*(\[\d+\])?\s*:", re.IGNORECASE)


def is_forward(subject: str) -> bool:
    """Whether a subject starts with a forward prefix (`Fwd:`, `FW:`, `ПЕРЕСЛ:`): the whole
    text is what the customer sends us."""
    return bool(_FORWARD_PREFIX.match(subject or ""))


def _charset(declared: str) -> str:
    declared = (declared or "").strip().strip('"').lower()
    return _CHARSET_ALIASES.get(declared, declared)


# Undeclared 8-bit Cyrillic: every one of these decodes any byte, so the text is scored instead.
_CYRILLIC_GUESSES = ("cp1251", "koi8_r", "koi8_u", "cp866", "iso8859_5", "mac_cyrillic")


# Letters of the languages our customers write in; a wrong decoding yields others (ќ, ѕ, ╬, ¤).
_COMMON_LETTERS = frozenset(
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяіїєґ"
    "АБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯІЇЄҐ"
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _looks_like_words(text: str) -> float:
    """How much `text` looks like real Ukrainian, Russian or English words (higher is better)."""
    visible = [ch for ch in text if not ch.isspace()]
    if not visible:
        return 0.0
    letters = [ch for ch in visible if ch in _COMMON_LETTERS]
    lower = sum(1 for ch in letters if ch.islower())
    # A lower-case letter right before an upper-case one: koi8-r read as windows-1251 (and
    # the reverse) swaps the case of nearly every letter.
    inversions = sum(1 for a, b in itertools.pairwise(text) if a.islower() and b.isupper())
    return (len(letters) + lower - 2 * inversions) / len(visible)


def guess_8bit(data: bytes) -> str:
    """Bytes of an unknown 8-bit Cyrillic charset as the decoding that reads most like words."""
    return max((data.decode(c) for c in _CYRILLIC_GUESSES), key=_looks_like_words)


def _single_byte(charset: str) -> bool:
    """Whether a charset maps every byte to one character (so decoding with it never fails)."""
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        return False
    return name in _SINGLE_BYTE or name.startswith(("iso8859-", "cp125", "koi8", "mac-"))


_SINGLE_BYTE = frozenset({"ascii", "latin-1", "cp866", "cp437", "cp850"})


def decode_bytes(data: bytes, declared: str = "") -> str:
    """Bytes -> text with the declared charset, else utf-8, else the likeliest Cyrillic 8-bit
    charset (never fails).

    Non-ASCII bytes that are valid UTF-8 are read as UTF-8 even under a declared single-byte
    charset: web forms and scripts label UTF-8 as windows-1251 or latin-1, and text in those
    charsets is practically never valid UTF-8 (a Cyrillic letter is never followed by a byte
    of 0x80-0xBF the way UTF-8 needs)."""
    declared = _charset(declared)
    if declared and not data.isascii() and _single_byte(declared):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    for charset in (declared, "utf-8"):
        if not charset:
            continue
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return guess_8bit(data)


# Single-byte charsets that decode any byte: as a hint for raw header bytes they prove nothing.
_WEAK_HINTS = {"us-ascii", "ascii", "latin-1", "latin1", "iso-8859-1", "iso8859-1", "windows-1252", "cp1252"}


def _fix_8bit(text: str, hint: str = "") -> str:
    """Undo the surrogate escapes the parser leaves for raw 8-bit header bytes.

    `hint`: the message's declared body charset (senders that skip RFC 2047 write headers in it)."""
    if not _has_8bit(text):
        return text
    data = text.encode("utf-8", "surrogateescape")
    hint = _charset(hint)
    if hint in _WEAK_HINTS:
        hint = ""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return decode_bytes(data, hint)


_ENCODED_WORD = r"=\?[^?]*\?[qQbB]\?.*?\?="
# Encoded words with only whitespace between them: RFC 2047 drops that whitespace.
_ENCODED_RUN = re.compile(rf"{_ENCODED_WORD}(?:\s*{_ENCODED_WORD})*")


def decode_header_value(raw: str, hint: str = "") -> str:
    """A raw header value as text: unfolded, 8-bit bytes recovered, RFC 2047 words decoded.

    `hint`: the charset raw 8-bit bytes are most likely in (the message's declared one)."""
    text = _fix_8bit(re.sub(r"\r?\n[ \t]+", " ", raw), hint)
    if "=?" not in text:
        return text.strip()
    # Only the encoded words go through the stdlib: it hands back the text around them as
    # raw-unicode-escape bytes, and decoding those turns C:\Users into garbage.
    pieces: list[str] = []
    end = 0
    for match in _ENCODED_RUN.finditer(text):
        pieces.append(text[end : match.start()])
        pieces.append(_decode_words(match.group()))
        end = match.end()
    pieces.append(text[end:])
    return "".join(pieces).strip()


def _decode_words(run: str) -> str:
    """Adjacent encoded words as text (one run, so a character split across words is whole);
    the run verbatim when it does not decode."""
    try:
        parts = decode_header(run)
    except PARSE_ERRORS:
        return run
    return "".join(
        decode_bytes(value, charset or "") if isinstance(value, bytes) else str(value)
        for value, charset in parts
    )


class _Headers:
    """A message's raw header values by lower-case name, indexed once: a message is asked for
    a dozen headers, and `Message.get` scans every header for each."""

    __slots__ = ("_hint", "_msg", "_values")

    def __init__(self, msg: Message) -> None:
        values: dict[str, list[str]] = {}
        for key, value in msg.raw_items():
            values.setdefault(key.lower(), []).append(str(value))
        self._values = values
        self._msg = msg
        self._hint: str | None = None

    @property
    def charset_hint(self) -> str:
        """The charset the message declares for its text (read only when a header needs it)."""
        if self._hint is None:
            charsets = (part.get_content_charset() for part in self._msg.walk())
            self._hint = next((c for c in charsets if c), "")
        return self._hint

    def raw(self, name: str) -> list[str]:
        return self._values.get(name.lower(), [])


def _index(msg: Message | _Headers) -> _Headers:
    return msg if isinstance(msg, _Headers) else _Headers(msg)


def _has_8bit(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def header_text(msg: Message | _Headers, name: str) -> str:
    """A header as readable text (RFC 2047 decoded, 8-bit bytes recovered); '' when absent."""
    headers = _index(msg)
    values = headers.raw(name)
    if not values:
        return ""
    return one_line(decode_header_value(values[0], headers.charset_hint if _has_8bit(values[0]) else ""))


def _addresses(msg: Message | _Headers, *names: str) -> list[tuple[str, str]]:
    """(display name, normalized address) of every valid address in these headers."""
    headers = _index(msg)
    found: list[tuple[str, str]] = []
    for name in names:
        values = headers.raw(name)
        if not values:
            continue
        hint = headers.charset_hint if any(_has_8bit(v) for v in values) else ""
        raw = [_fix_8bit(re.sub(r"\r?\n[ \t]+", " ", v), hint) for v in values]
        # Split on the raw value: encoded words never contain the commas that separate addresses.
        for display, addr in getaddresses(raw):
            normalized = normalize_email(addr or "")
            if normalized:
                found.append((one_line(decode_header_value(display or "")), normalized))
    return found


def part_text(part: Message) -> str:
    """A text part's content with charset fallbacks (mislabeled mail is common)."""
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return decode_bytes(payload, part.get_content_charset() or "")
    raw = part.get_payload()
    return raw if isinstance(raw, str) else ""


def automatic_reason(msg: Message | _Headers, senders: list[tuple[str, str]] | None = None) -> str:
    """Why this mail was sent by a machine (RFC 3834 and common practice); '' for a person.

    `senders`: the From addresses when the caller has them already."""
    headers = _index(msg)
    auto = header_text(headers, "Auto-Submitted").lower()
    if auto and not auto.startswith("no"):
        return f"Auto-Submitted: {auto}"
    precedence = header_text(headers, "Precedence").lower()
    if precedence in ("bulk", "list", "junk", "auto_reply"):
        return f"Precedence: {precedence}"
    if headers.raw("List-Id") or headers.raw("List-Unsubscribe"):
        return "mailing list"
    return_path = headers.raw("Return-Path")
    if return_path and all(v.strip() in ("<>", "") for v in return_path):
        return "empty Return-Path"
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress"):
        if headers.raw(name):
            return name
    sender = _addresses(headers, "From") if senders is None else senders
    if sender and sender[0][1].split("@")[0] in _DAEMONS:
        return "mailer daemon"
    return ""


def _bounce(msg: Message) -> Bounce | None:
    """The DSN of an RFC 3464 report, or None when this is not a delivery status notification."""
    if msg.get_content_type() == "multipart/report":
        report_type = msg.get_param("report-type")
        if str(report_type or "").lower() not in ("delivery-status", ""):
            return None
    status_part = next((p for p in msg.walk() if p.get_content_type() == "message/delivery-status"), None)
    if status_part is None:
        return None
    recipients: list[str] = []
    statuses: list[str] = []
    diagnostics: list[str] = []
    actions: list[str] = []
    blocks = status_part.get_payload()
    if isinstance(blocks, list):
        for block in blocks:
            if not isinstance(block, Message):
                continue
            recipient = header_text(block, "Final-Recipient") or header_text(block, "Original-Recipient")
            if recipient:
                recipients.append(recipient.split(";", 1)[-1].strip())
            if status := header_text(block, "Status"):
                statuses.append(status)
            if action := header_text(block, "Action").lower():
                actions.append(action)
            if diagnostic := header_text(block, "Diagnostic-Code"):
                diagnostics.append(diagnostic.split(";", 1)[-1].strip())
    original_ids: list[str] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        headers: Message | None = None
        if ctype == "message/rfc822":
            inner = part.get_payload()
            first = inner[0] if isinstance(inner, list) and inner else None
            headers = first if isinstance(first, Message) else None
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers"):
            headers = HeaderParser(policy=email.policy.compat32).parsestr(part_text(part))
        if headers is not None:
            original_ids.extend(message_ids(str(headers.get("Message-ID", ""))))
    if not original_ids:
        # Some MTAs return no copy of the message but keep our id in the report's threading headers.
        original_ids = message_ids(header_text(msg, "In-Reply-To")) + message_ids(
            header_text(msg, "References")
        )
    if actions:
        failed = "failed" in actions
    else:
        failed = not statuses or any(not status.startswith(("2", "4")) for status in statuses)
    return Bounce(
        original_ids=list(dict.fromkeys(original_ids)),
        recipients=recipients,
        status=", ".join(statuses),
        diagnostic="; ".join(diagnostics)[:1000],
        failed=failed,
    )


# The Message-ID of a message we sent (see smtp.our_message_id), as it appears in a bounce.
_OUR_MESSAGE_ID = re.compile(r"message-id:\s*<(hub\.[0-9a-f]{32}@[^<>\s]+)>", re.IGNORECASE)
_OUR_MESSAGE_ID_BYTES = re.compile(_OUR_MESSAGE_ID.pattern.encode(), re.IGNORECASE)


def _plain_bounce(raw: bytes, text: str) -> Bounce | None:
    """A bounce without an RFC 3464 report (qmail, older Exim): a mailer daemon's message that
    quotes the headers of one of ours. None when it quotes none of ours."""
    found = [m.decode("ascii", "replace") for m in _OUR_MESSAGE_ID_BYTES.findall(raw[:1_000_000])]
    found += _OUR_MESSAGE_ID.findall(text)
    if not found:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return Bounce(
        original_ids=list(dict.fromkeys(found)),
        recipients=[],
        status="",
        diagnostic=" ".join(lines[:6])[:1000],
    )


def _is_attachment(part: Message) -> bool:
    disposition = (part.get_content_disposition() or "").lower()
    if disposition == "attachment":
        return True
    if part.get_filename():
        return True
    return part.get_content_maintype() not in ("text", "multipart", "message")


def _params_readable(part: Message) -> Message:
    """The part, or a stand-in with its Content-Disposition and Content-Type only, their raw
    8-bit bytes (RFC 6532 filenames) read as text: compat32 would turn them into U+FFFD."""
    raw = [(k, str(v)) for k, v in part.raw_items() if k.lower() in ("content-disposition", "content-type")]
    if not any(_has_8bit(value) for _, value in raw):
        return part
    readable = Message()
    for key, value in raw:
        readable[key] = _fix_8bit(re.sub(r"\r?\n[ \t]+", " ", value))
    return readable


def _filename(part: Message, index: int) -> str:
    try:
        name = _params_readable(part).get_filename() or ""
    except PARSE_ERRORS:
        name = ""
    name = decode_header_value(name).replace("/", "_").replace("\\", "_").strip()
    if not name:
        subtype = part.get_content_subtype() or "bin"
        name = f"attachment-{index}.{subtype}"
    return name[:255]


# RFC 5545 3.1: a line may be folded inside a multi-octet UTF-8 character, so calendar lines
# are unfolded as bytes, before decoding (decoding first turned that character into garbage).
_ICS_UNFOLD = re.compile(rb"\r?\n[ \t]")
_ICS_METHODS = {
    "REQUEST": "Calendar invitation",
    "CANCEL": "Calendar cancellation",
    "REPLY": "Calendar reply",
}
_ICS_DEFAULT = "Calendar event"
ICS_UNREADABLE = "(the calendar file could not be read; it is attached)"
ICS_MAX_EVENTS = 5
# The library takes ~0.2 ms per component: a whole exported calendar (thousands of events)
# would hold the parser for seconds, and staff only need to know what it is.
ICS_MAX_COMPONENTS = 200
_ICS_BEGIN = re.compile(rb"^begin:", re.IGNORECASE | re.MULTILINE)
_ICS_BEGIN_EVENT = re.compile(rb"^begin:vevent\b", re.IGNORECASE | re.MULTILINE)
_ICS_MAX_FIELD = 200


def _ics_first(value: Any) -> Any:
    """A property's value; the first one when a component repeats the property."""
    return value[0] if isinstance(value, list) and value else value


def _ics_text(component: Component, name: str) -> str:
    value = _ics_first(component.get(name))
    return one_line(str(value))[:_ICS_MAX_FIELD] if value is not None else ""


def _ics_when(event: Component) -> str:
    """`2026-12-01 10:00 Europe/Kyiv`: the start as the sender wrote it, with its TZID's name."""
    prop = _ics_first(event.get("DTSTART"))
    if prop is None:
        return ""
    try:
        value = prop.dt
    except ValueError:
        # A start the library cannot read (its "broken property"): show it as written.
        return one_line(str(prop))[:_ICS_MAX_FIELD]
    if isinstance(value, datetime):
        zone = str(prop.params.get("TZID", "")).strip('"')
        if not zone and value.tzinfo is not None and value.utcoffset() == timedelta(0):
            zone = "UTC"
        return f"{value:%Y-%m-%d %H:%M} {zone}".strip()
    if isinstance(value, date):
        return f"{value:%Y-%m-%d}"
    return one_line(str(value))[:_ICS_MAX_FIELD]


def _ics_events(
    calendars: Sequence[Component],
) -> list[Component]:
    """Every VEVENT, minus a recurring series' moved occurrences when the series itself is there."""
    events = [event for calendar in calendars for event in calendar.walk("VEVENT")]
    series = {
        str(e.get("UID")) for e in events if e.get("UID") is not None and e.get("RECURRENCE-ID") is None
    }
    return [e for e in events if e.get("RECURRENCE-ID") is None or str(e.get("UID")) not in series]


def calendar_text(data: bytes, charset: str = "", method: str = "") -> str:
    """A few readable lines for a calendar part: what kind of message it is, then each event's
    summary, start and location; '' when it holds no event. Data the `icalendar` package
    cannot read gets a neutral line (the caller keeps the file as an attachment).

    `charset`: the part's declared one; `method`: the Content-Type's `method` parameter."""
    data = _ICS_UNFOLD.sub(b"", data)
    method = method.strip().upper()
    if len(_ICS_BEGIN.findall(data)) > ICS_MAX_COMPONENTS:
        count = len(_ICS_BEGIN_EVENT.findall(data))
        return f"{_ICS_METHODS.get(method, _ICS_DEFAULT)}\n(a large calendar: {count} events; it is attached)"
    text = decode_bytes(data, charset)
    try:
        found = Calendar.from_ical(text, multiple=True)
    except (*PARSE_ERRORS, RecursionError) as exc:
        # The library raises AttributeError too (a VTIMEZONE closed by another END).
        log.info(
            "email: a calendar part could not be read (%s); it is kept as an attachment", type(exc).__name__
        )
        return f"{_ICS_METHODS.get(method, _ICS_DEFAULT)}\n{ICS_UNREADABLE}"
    calendars = found if isinstance(found, list) else [found]
    if not calendars:
        # Nothing the library could close (a file cut short): not the same as no events.
        return f"{_ICS_METHODS.get(method, _ICS_DEFAULT)}\n{ICS_UNREADABLE}"
    method = next((m for c in calendars if (m := _ics_text(c, "METHOD").upper())), method)
    events = _ics_events(calendars)
    blocks: list[str] = []
    for event in events[:ICS_MAX_EVENTS]:
        fields = (
            ("Event", _ics_text(event, "SUMMARY")),
            ("Starts", _ics_when(event)),
            ("Location", _ics_text(event, "LOCATION")),
        )
        if lines := [f"{label}: {value}" for label, value in fields if value]:
            blocks.append("\n".join(lines))
    if not blocks:
        return ""
    if len(events) > ICS_MAX_EVENTS:
        blocks.append(f"… and {len(events) - ICS_MAX_EVENTS} more event(s)")
    return _ICS_METHODS.get(method, _ICS_DEFAULT) + "\n" + "\n\n".join(blocks)


@dataclass(slots=True)
class _Bodies:
    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[RawAttachment] = field(default_factory=list)
    forwards: list[tuple[str, _Bodies]] = field(default_factory=list)
    # Readable lines of calendar parts: the text of a mail that is nothing but an invitation.
    calendars: list[str] = field(default_factory=list)


def _forward_line(inner: Message) -> str:
    """`Forwarded message — From: … | Subject: … | Date: …` for a message/rfc822 part.

    One line that matches none of the quote markers, so strip_quoted never cuts there."""
    fields = [(label, header_text(inner, label)) for label in ("From", "Subject", "Date")]
    return "Forwarded message — " + " | ".join(f"{label}: {value}" for label, value in fields if value)


def _attachment_type(part: Message, ctype: str) -> str:
    """The part's type, with its declared charset for text (a text file is unreadable without it)."""
    charset = part.get_content_charset() if ctype.startswith("text/") else None
    if charset and re.fullmatch(r"[a-z0-9._-]{1,40}", charset):
        return f"{ctype}; charset={charset}"
    return ctype


def _collect(part: Message, found: _Bodies, in_report: bool) -> None:
    """Every inline text part in order, attachments, and forwarded messages of one part."""
    ctype = part.get_content_type()
    if ctype in ("message/delivery-status", "text/rfc822-headers", "message/rfc822-headers"):
        return
    if part.is_multipart():
        payload = part.get_payload()
        children = (
            [child for child in payload if isinstance(child, Message)] if isinstance(payload, list) else []
        )
        if ctype == "message/rfc822":
            if in_report:
                return  # a bounce's copy of our own mail is not the customer's text
            for inner in children:
                forwarded = _Bodies(attachments=found.attachments)
                _collect(inner, forwarded, in_report)
                found.forwards.append((_forward_line(inner), forwarded))
            return
        for child in children:
            _collect(child, found, in_report or ctype == "multipart/report")
        return
    if ctype == "text/calendar":
        # An invitation is kept whole as the .ics staff can open, inline or not.
        payload_bytes = part.get_payload(decode=True)
        data = payload_bytes if isinstance(payload_bytes, bytes) else b""
        name = _filename(part, 0) if part.get_filename() else "invite.ics"
        found.attachments.append(RawAttachment(name, ctype, data))
        method = collapse_rfc2231_value(part.get_param("method") or "")
        if summary := calendar_text(data, part.get_content_charset() or "", method):
            found.calendars.append(summary)
    elif _is_attachment(part):
        payload_bytes = part.get_payload(decode=True)
        data = payload_bytes if isinstance(payload_bytes, bytes) else b""
        found.attachments.append(
            RawAttachment(_filename(part, len(found.attachments) + 1), _attachment_type(part, ctype), data)
        )
    elif ctype == "text/plain":
        found.plain.append(part_text(part))
    elif ctype == "text/html":
        found.html.append(part_text(part))


def _joined(found: _Bodies) -> tuple[str, str]:
    """(text, raw html): text parts joined in order (Apple Mail splits text around inline
    images), else the html's text, else what the calendar parts describe; each forwarded
    message's text follows under its line."""
    plain = "\n\n".join(p.strip("\r\n") for p in found.plain).strip()
    raw_html = "\n".join(found.html)
    text = plain or (html_to_text(raw_html) if raw_html else "") or "\n\n".join(found.calendars)
    for line, forwarded in found.forwards:
        inner_text, inner_html = _joined(forwarded)
        text = f"{text}\n\n{line}\n\n{inner_text}".strip()
        if raw_html and inner_html:
            raw_html += f"<p>{html_lib.escape(line)}</p>{inner_html}"
    return text, raw_html


def _bodies(msg: Message) -> tuple[str, str, list[RawAttachment]]:
    """(text, raw html, attachments) of the whole message, forwarded messages included."""
    found = _Bodies()
    _collect(msg, found, msg.get_content_type() == "multipart/report")
    text, raw_html = _joined(found)
    return text, raw_html, found.attachments


def parse_email(raw: bytes) -> ParsedEmail:
    """Parse raw RFC 822 bytes; DecodeError (with the reason) when it is not usable mail."""
    if not raw or not raw.strip():
        raise DecodeError("empty message")
    try:
        # compat32 parsing is several times faster than the modern policy's header objects; the
        # headers we read are decoded here (RFC 2047, 8-bit recovery), which is what we need anyway.
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        return _parse(msg, raw)
    except DecodeError:
        raise
    except PARSE_ERRORS as exc:
        raise DecodeError(f"unparseable MIME: {type(exc).__name__}: {exc}") from exc
    except RecursionError as exc:
        raise DecodeError("unparseable MIME: nesting too deep") from exc


# From addresses of machines that send on a person's behalf (form relays, notifications).
_RELAY_LOCAL = re.compile(
    r"^(no[-_.]?reply|do[-_.]?not[-_.]?reply|wordpress|mailer|robot|bot|forms?|webforms?|"
    r"contact[-_.]?forms?|notifications?|notify|site|website|www|www-data|apache|nginx)$"
)


def _relayed(name: str, address: str, recipients: list[str]) -> bool:
    """Whether a From is a relay for the person in Reply-To: a machine's address, a list's
    "Olena via Support" rewrite, or our own domain (the company's site relaying its form).

    Anyone else's Reply-To stays a wish for where replies go: unlike From, no receiving server
    checks it (DMARC), so it must not make a stranger's mail a known customer's."""
    local, _, domain = address.partition("@")
    if _RELAY_LOCAL.match(local.split("+")[0]) or " via " in f" {name.lower()} ":
        return True
    return any(r.partition("@")[2] == domain for r in recipients)


def _unquoted(name: str) -> str:
    """A display name without the one pair of quotes some clients leave around it; quotes that
    belong to the name stay (`ТОВ "Ромашка"` is a company's name, not `ТОВ "Ромашка`)."""
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"' and '"' not in name[1:-1]:
        return name[1:-1].strip()
    return name


def _parse(msg: Message, raw: bytes) -> ParsedEmail:
    if not msg.keys():
        raise DecodeError("no headers: this is not an email message")
    headers = _Headers(msg)
    from_addresses = _addresses(headers, "From")
    reply_to = _addresses(headers, "Reply-To")
    senders = from_addresses or _addresses(headers, "Sender") or reply_to
    if not senders:
        raise DecodeError(f"no valid sender address (From: {header_text(headers, 'From')[:200]!r})")
    sender_name, sender = senders[0]
    from_address = sender
    recipients = [a for _, a in _addresses(headers, "To", "Cc", "Delivered-To", "X-Original-To")]
    if len(reply_to) == 1 and reply_to[0][1] != sender and _relayed(sender_name, sender, recipients):
        # A site's form relay or a mailing list writes From: itself and Reply-To: the person
        # (every customer of a site became one contact with one lead, acknowledged at the relay).
        sender_name, sender = reply_to[0]
    subject = header_text(headers, "Subject")[:1000]
    own_ids = message_ids(header_text(headers, "Message-ID"))
    thread_ids = message_ids(header_text(headers, "In-Reply-To")) + message_ids(
        header_text(headers, "References")
    )
    text, raw_html, raw_attachments = _bodies(msg)
    html = sanitize_html(raw_html) if raw_html else ""
    if not text and not raw_attachments and msg.get_content_maintype() == "multipart":
        # A boundary that never matches leaves the body unsplit (or in the preamble): keep it as text.
        payload = msg.get_payload()
        leftover = payload if isinstance(payload, str) else (msg.preamble or "")
        text = _fix_8bit(leftover).strip()
    bounce = _bounce(msg) or (_plain_bounce(raw, text) if from_address.split("@")[0] in _DAEMONS else None)
    return ParsedEmail(
        sender=sender,
        sender_name=_unquoted(sender_name)[:200],
        recipients=list(dict.fromkeys(recipients)),
        subject=subject,
        message_id=own_ids[0] if own_ids else "",
        thread_ids=list(dict.fromkeys(thread_ids))[-MAX_REFS:],
        lead_number=lead_token(subject),
        text=text,
        html=html,
        attachments=raw_attachments,
        automatic=automatic_reason(headers, from_addresses)
        or ("delivery status notification" if bounce else ""),
        bounce=bounce,
        content_language=header_text(headers, "Content-Language").split(",")[0].strip(),
    )


def might_have_attachments(raw: bytes) -> bool:
    """A cheap test before a full parse: only multipart or non-text mail can carry files."""
    head = raw[:65536].lower()
    return b"multipart/" in head or b"filename" in head or b"attachment" in head


def encoded_words(name: str, text: str) -> str:
    """`text` as RFC 2047 encoded words, folded to fit a `name:` header line.

    The modern policy's folder (Python 3.11) puts the space between two words at a fold outside
    the encoded words, where RFC 2047 decoders drop it: one in five long Cyrillic subjects reached
    the customer as "майстер—12". The legacy encoder keeps every space inside a word."""
    return Header(text, "utf-8", header_name=name).encode(linesep="\n")


def set_text_header(msg: EmailMessage, name: str, text: str) -> None:
    """Add a header of free text (a subject) that keeps every space in any mail client."""
    if text.isascii():
        msg[name] = text
    else:
        # A raw value whose lines all fit is sent as it is; the policy never refolds it.
        msg.set_raw(name, encoded_words(name, text))


def new_message(subject: str) -> EmailMessage:
    """An empty outgoing message (the modern policy, so headers are encoded correctly)."""
    msg = EmailMessage(policy=email.policy.SMTP)
    set_text_header(msg, "Subject", subject)
    return msg
