"""Texts the bot sends: HTML with every user-supplied string escaped, split to Telegram's size."""

from __future__ import annotations

import html
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from hub import i18n
from hub.delivery_failures import failure_text, left_out_text
from hub.refusals import refusal_text

#: Telegram's limit for one text message (after entity parsing; we count the source text).
MAX_TEXT = 4096
#: Language of the staff group and the alerts chat.
STAFF_LANGUAGE = i18n.DEFAULT


def esc(value: object) -> str:
    """Escape anything for Telegram's HTML parse mode (<, >, & and quotes)."""
    return html.escape(str(value), quote=True)


def t(key: str, language: str, **values: Any) -> str:
    """A localized template filled with values that are escaped first."""
    return i18n.text(key, language, **{k: esc(v) for k, v in values.items()})


def staff(key: str, **values: Any) -> str:
    """A staff-facing text (escaped values)."""
    return t(key, STAFF_LANGUAGE, **values)


def plain_staff(key: str, **values: Any) -> str:
    """A staff-facing plain text (callback answers, which Telegram shows without parsing HTML)."""
    return i18n.text(key, STAFF_LANGUAGE, **values)


def raw_staff(key: str, **values: Any) -> str:
    """A staff-facing text whose values are already HTML (mentions, links)."""
    return i18n.text(key, STAFF_LANGUAGE, **values)


def staff_refusal(code: str, language: str | None = None) -> str:
    """Why the core refused a staff action (a `hub.refusals` code), as plain staff-language text.

    Each refusal is a whole sentence (some with a colon of their own), so it is shown after a
    sign rather than after "Could not do that:". Where the dashboard's wording speaks of pages
    and forms, `tg.error.<code>` says it in Telegram's terms.
    """
    language = language or STAFF_LANGUAGE
    key = f"tg.error.{code}"
    own = i18n.text(key, language)
    reason = own if own != key else refusal_text(code, language)
    return i18n.text("tg.staff.error", language, error=reason)


def staff_delivery_failure(reason: str) -> str:
    """Why a reply was not delivered (a `hub.delivery_failures` code), as plain staff-language text."""
    return failure_text(reason, STAFF_LANGUAGE)


def staff_left_out(reason: str) -> str:
    """Why a file did not go out with a delivered reply (a `hub.delivery_failures.FILE_*` code)."""
    return left_out_text(reason, STAFF_LANGUAGE)


def staff_label(group: str, value: str) -> str:
    """A status or channel id as a plain word in the staff's language (an unknown id as it is)."""
    key = f"dash.{group}.{value}"
    found = i18n.text(key, STAFF_LANGUAGE)
    return value if found == key else found


def local_time(value: datetime | None, timezone: str) -> str:
    """`2026-11-23 18:40` in the SLA calendar's zone ('-' when unknown)."""
    if value is None:
        return "-"
    return value.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M")


def mention(user_id: int | None, name: str) -> str:
    """A tag that notifies a Telegram user (plain escaped name without an id)."""
    if user_id is None:
        return esc(name)
    return f'<a href="tg://user?id={int(user_id)}">{esc(name)}</a>'


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Split plain text into parts of at most `limit` characters, at line breaks when possible."""
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", limit // 2, limit)
        if cut <= 0:
            cut = rest.rfind(" ", limit // 2, limit)
        if cut <= 0:
            cut = limit
        parts.append(rest[:cut])
        rest = rest[cut:].lstrip("\n") if rest[cut : cut + 1] == "\n" else rest[cut:]
    if rest:
        parts.append(rest)
    return parts


def split_html_escaped(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Escape plain text and split it so that no part exceeds `limit` after escaping."""
    # Escaping can grow text up to 6x (&quot;); split the source so each escaped part fits.
    parts: list[str] = []
    for chunk in split_text(text, limit):
        pending = [chunk]
        while pending:
            piece = pending.pop(0)
            escaped = esc(piece)
            if len(escaped) <= limit or len(piece) <= 1:
                parts.append(escaped)
            else:
                half = len(piece) // 2
                pending[0:0] = [piece[:half], piece[half:]]
    return parts


_HTML_TOKEN = re.compile(r"<[^>]*>|&#?\w+;|[^<&]+|[<&]")
#: Shows that a text was cut to fit one message.
CUT_MARKER = "…"


def truncate_html(text: str, limit: int = MAX_TEXT) -> str:
    """Cut well-formed HTML to at most `limit` characters, ending in "…" and closing open tags.

    Cuts fall only between characters of text, never inside a tag or an entity.
    """
    if len(text) <= limit:
        return text
    out: list[str] = []
    stack: list[str] = []
    size = 0

    def closing(names: list[str]) -> int:
        return sum(len(name) + 3 for name in names)

    for match in _HTML_TOKEN.finditer(text):
        token = match.group()
        if token.startswith("</"):
            stack.pop()
            out.append(token)  # its length was reserved when the tag opened
            size += len(token)
            continue
        if token.startswith("<") and len(token) > 1:
            name = token[1:-1].split(maxsplit=1)[0].lower()
            if size + len(token) + len(CUT_MARKER) + closing([*stack, name]) > limit:
                break
            stack.append(name)
        else:
            room = limit - size - len(CUT_MARKER) - closing(stack)
            if len(token) > room:
                if not token.startswith("&"):
                    out.append(token[: max(room, 0)])
                break
        out.append(token)
        size += len(token)
    return "".join(out) + CUT_MARKER + "".join(f"</{name}>" for name in reversed(stack))
