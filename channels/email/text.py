"""Text helpers for email bodies: HTML to plain text, sanitizing, quoted history and signatures.

Customers write from Gmail, Outlook, Thunderbird, Apple Mail, Yandex and mail.ru in Ukrainian,
Russian and English; each client marks quoted history differently, so the cut points below
cover the common shapes and `mail-parser-reply` covers the rest of the Western clients.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

import nh3
from mailparser_reply import EmailReplyParser
from mailparser_reply.parser import EmailMessage as _ReplyMessage

# Remote images are tracking pixels in the dashboard; inline ones we do not serve. Drop both.
_ALLOWED_TAGS = set(nh3.ALLOWED_TAGS) - {"img", "area", "map"}

_BLOCK_TAGS = {
    "p",
    "div",
    "br",
    "tr",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "pre",
    "table",
    "ul",
    "ol",
    "hr",
    "section",
    "article",
    "header",
    "footer",
}
_SKIP_TAGS = {"script", "style", "head", "title", "template", "noscript"}


def sanitize_html(html: str) -> str:
    """HTML safe to show in the dashboard: no scripts, handlers, javascript: links or images."""
    return nh3.clean(html, tags=_ALLOWED_TAGS)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")
        elif tag == "td":
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Readable plain text of an HTML body (for Telegram and search)."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts).replace("\xa0", " ")
    lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# Lines where quoted history starts, in the clients and languages our customers use.
_QUOTE_HEADER = re.compile(
    "|".join(
        f"(?:{p})"
        for p in (
            r"^-{2,}\s*(original message|исходное сообщение|оригінальне повідомлення|"
            r"пересылаемое сообщение|переслане повідомлення|forwarded message)\s*-{2,}",
            r"^_{10,}\s*$",  # Outlook's rule above the quoted header block
            r"^(from|от|від|від кого|кому|sent|отправлено|надіслано)\s*:\s.*",
            r"^(on|в|у)\s.{0,200}(wrote|пишет|написал|написала|написал\(а\)|пише|написав|написала)\s*:\s*$",
            r".{0,200}\b(пишет|написал|написал\(а\)|пише|написав|написала|wrote)\s*:\s*$",
            r"^\d{1,2}[./]\d{1,2}[./]\d{2,4}.{0,80}<[^>\s]+@[^>\s]+>\s*:?\s*$",  # Yandex, mail.ru
            r"^.{0,200}\d{1,2}:\d{2}.{0,100}<[^>\s]+@[^>\s]+>\s*:\s*$",  # Gmail in ru/uk: "Вт, 24 нояб. ... <a@b>:"
        )
    ),
    re.IGNORECASE,
)
_SIGNATURE = re.compile(r"^(--|-- |—)\s*$")
_MOBILE_SIGNATURE = re.compile(
    r"^(sent from my|отправлено с|надіслано з|отправлено из|sent from (mail|outlook))\b", re.IGNORECASE
)
_reply_parser = EmailReplyParser(languages=["en", "de", "pl", "fr", "es", "it", "nl"])
# The library builds its patterns anew for every message; ours are built once. Every one of its
# reply headers contains a colon or "-----", so text with neither has none (the search alone
# is most of the library's cost).
_REPLY_HEADERS = _ReplyMessage(text="", languages=list(_reply_parser.languages)).HEADER_REGEX
_NO_REPLY_HEADERS = re.compile(r"(?!)")


@dataclass
class _LatestReply(_ReplyMessage):  # type: ignore[misc]
    """The library's message, minus the signature and disclaimer search: `latest_reply` is the
    first reply's raw content and never uses them."""

    def _process_signatures_disclaimers(self, text: str) -> tuple[list[str], str]:
        return [], ""


def latest_reply(text: str) -> str | None:
    """What `mail-parser-reply`'s `parse_reply` returns for `text`, at a fraction of its cost."""
    headers = _REPLY_HEADERS if ":" in text or "-----" in text else _NO_REPLY_HEADERS
    message = _LatestReply(text=text, languages=list(_reply_parser.languages), _header_regex=headers)
    latest: str | None = message.read().latest_reply
    return latest


def strip_quoted(text: str) -> str:
    """Only what is new in a reply: quoted history, reply headers and signatures cut off."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    try:
        latest = latest_reply(text)
    except (ValueError, IndexError, AttributeError, TypeError):
        # The library is best effort; our own cut below still applies.
        latest = None
    candidate = latest if latest and latest.strip() else text
    kept: list[str] = []
    for line in candidate.split("\n"):
        stripped = line.strip()
        if _SIGNATURE.match(line) or _MOBILE_SIGNATURE.match(stripped):
            break
        if kept and _QUOTE_HEADER.match(stripped):
            break
        kept.append(line)
    while kept and (not kept[-1].strip() or kept[-1].lstrip().startswith(">")):
        kept.pop()
    result = "\n".join(kept).strip()
    # A message that is nothing but a quote (a bare forward) keeps its text: better too much than none.
    return result or text.strip()


def guess_language(text: str) -> str:
    """`uk`, `ru` or `en` from the letters used (for the acknowledgement's language)."""
    sample = text[:2000]
    cyrillic = len(re.findall(r"[А-Яа-яЁёІіЇїЄєҐґ]", sample))
    latin = len(re.findall(r"[A-Za-z]", sample))
    if cyrillic and cyrillic >= latin / 2:
        if re.search(r"[ІіЇїЄєҐґ]", sample):
            return "uk"
        if re.search(r"[ЫыЭэЁёЪъ]", sample):
            return "ru"
        return "uk"
    return "en" if latin else ""
