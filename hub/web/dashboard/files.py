"""Customers' stored attachments, opened from the lead page.

A file is whatever a customer mailed us, so it is served as hostile content: only types a
browser shows without running anything (images, PDF, plain text) are shown inline, everything
else is a download of `application/octet-stream`; every answer says `nosniff` and carries a
`sandbox` CSP, so even an HTML or SVG file opened by hand runs no script in our origin.
"""

from __future__ import annotations

import codecs
import logging
import re
from urllib.parse import quote

from aiohttp import web

from hub.attachments import is_stored_ref
from hub.domain import Attachment, Lead
from hub.web.dashboard.common import PREFIX, error_page, hub_of, viewer_of

log = logging.getLogger(__name__)

INLINE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain"}
)
DOWNLOAD_TYPE = "application/octet-stream"
# No script, no plugin, no form, no same origin: the file's page can do nothing but be looked at.
FILE_CSP = "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'"
# Mail without a charset is nowadays UTF-8 far more often than the us-ascii RFC 2046 assumes.
DEFAULT_TEXT_CHARSET = "utf-8"
_CHARSET = re.compile(r"^[A-Za-z0-9._-]{1,40}$")
_UNSAFE_IN_QUOTES = re.compile(r'[^\x20-\x7e]|["\\%]')


def file_path(lead: Lead, message_id: str, index: int) -> str:
    """The dashboard URL of one attachment of one message of a lead."""
    return f"{PREFIX}/leads/{lead.ref}/messages/{quote(message_id, safe='')}/attachments/{index}"


def media_type(content_type: str) -> tuple[str, str]:
    """(lowercased type/subtype, charset parameter or "") of a stored content type."""
    kind, _, params = content_type.partition(";")
    charset = ""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"')
    return kind.strip().lower(), charset


def _known_charset(charset: str) -> str | None:
    if not _CHARSET.match(charset):
        return None
    try:
        codecs.lookup(charset)
    except LookupError:
        return None
    return charset.lower()


def served_type(content_type: str) -> str | None:
    """The Content-Type to show a file inline with, or None when it must be downloaded."""
    kind, charset = media_type(content_type)
    if kind not in INLINE_TYPES:
        return None
    if kind == "text/plain":
        known = _known_charset(charset) if charset else DEFAULT_TEXT_CHARSET
        return f"text/plain; charset={known}" if known else None
    return kind


def content_disposition(disposition: str, name: str) -> str:
    """`inline`/`attachment` with the name as an ASCII fallback and as RFC 5987 UTF-8."""
    name = name.strip() or "attachment"
    fallback = _UNSAFE_IN_QUOTES.sub("_", name)
    encoded = quote(name, safe="")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


async def open_attachment(request: web.Request, lead: Lead) -> web.StreamResponse:
    """GET /dashboard/leads/{number}/messages/{message}/attachments/{index}, the lead already
    checked as one the viewer may open."""
    hub = hub_of(request)
    message_id = request.match_info["message"]
    raw_index = request.match_info["index"]
    message = await hub.store.get_message(message_id)
    attachment: Attachment | None = None
    if message is not None and message.lead_number == lead.number and raw_index.isdigit():
        index = int(raw_index)
        attachment = message.attachments[index] if index < len(message.attachments) else None
    path = (
        await hub.attachments.find(attachment.ref) if attachment and is_stored_ref(attachment.ref) else None
    )
    if attachment is None or path is None:
        return error_page(request, 404, "dash.error.no_file")
    shown = served_type(attachment.content_type)
    response = web.FileResponse(
        path,
        headers={
            "Content-Type": shown or DOWNLOAD_TYPE,
            "Content-Disposition": content_disposition("inline" if shown else "attachment", attachment.name),
            "Content-Security-Policy": FILE_CSP,
            "X-Content-Type-Options": "nosniff",
        },
    )
    log.info(
        "dashboard: %s opened %s of message %s on %s", viewer_of(request).id, raw_index, message_id, lead.ref
    )
    return response
