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
# Elements whose text a browser never shows in the page: nh3 keeps the text of a tag it drops
# unless the tag is named here (a message's <title> came out as its first line). Passing the
# set replaces nh3's default, so script and style are named too.
_CLEAN_CONTENT_TAGS = _SKIP_TAGS


def sanitize_html(html: str) -> str:
    """HTML safe to show in the dashboard: no scripts, handlers, javascript: links or images,
    and no text of elements a browser does not show (title, style, noscript)."""
    return nh3.clean(html, tags=_ALLOWED_TAGS, clean_content_tags=_CLEAN_CONTENT_TAGS)


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


# A forwarded message's first line: what follows is what the customer sends us, not history.
_FORWARD_LINE = (
    r"(-{2,}\s*(пересылаемое сообщение|пересланное сообщение|переслане повідомлення|пересланий лист|"
    r"forwarded message)\s*-{2,}|begin forwarded message\s*:)"
)
_FORWARD_MARKER = re.compile("^" + _FORWARD_LINE, re.IGNORECASE)
_FORWARD_ANYWHERE = re.compile(r"^[ \t]*" + _FORWARD_LINE, re.IGNORECASE | re.MULTILINE)
# Lines that start quoted history by themselves: separators no person types as content.
_QUOTE_SEPARATOR = re.compile(
    r"^-{2,}\s*(original message|исходное сообщение|оригінальне повідомлення)\s*-{2,}"
    # Yandex, mail.ru: "24.11.2026, 10:00, Support <s@example.com>:"
    r"|^\d{1,2}[./]\d{1,2}[./]\d{2,4}.{0,80}<[^>\s]+@[^>\s]+>\s*:?\s*$"
    # Gmail in ru/uk: "Вт, 24 нояб. 2026 г. в 10:00, Support <s@example.com>:"
    r"|^.{0,200}\d{1,2}:\d{2}.{0,100}<[^>\s]+@[^>\s]+>\s*:\s*$",
    re.IGNORECASE,
)
# "On Tue, Bob wrote:" — also ordinary prose ("майстер написав:"), so it starts a quote only
# with an address, a time or a year in it, or with a quote block right after it. Clients that
# do not know the writer's gender say "написав(ла)" (iOS in Ukrainian), "писал(а)" (K-9 Mail).
_ATTRIBUTION = re.compile(
    r"^.{0,200}\b(wrote|пишет|пише|(на)?писал|(на)?писала|(на)?писав)(\s*\((а|ла)\))?\s*:\s*$",
    re.IGNORECASE,
)
_ATTRIBUTION_DETAIL = re.compile(r"@|\d{1,2}:\d{2}|\b\d{4}\b")
_OUTLOOK_RULE = re.compile(r"^_{10,}\s*$")
# A quoted message's header block (Outlook and most webmail): one header name per line.
_HEADER_LINE = re.compile(
    r"^(?P<name>from|von|de|od|от|від|від кого|sent|date|gesendet|отправлено|дата|надіслано|"
    r"to|an|кому|subject|betreff|тема|cc|копия|копія)\s*:(\s|$)",
    re.IGNORECASE,
)
_FROM_HEADERS = {"from", "von", "de", "od", "от", "від", "від кого"}
_DATE_HEADERS = {"sent", "date", "gesendet", "отправлено", "дата", "надіслано"}
# Only the standard "-- " delimiter (RFC 3676) marks a signature; "--" without the space
# (clients that trim lines) only when a few short lines end the message after it.
_SIGNATURE = re.compile(r"^-- $")
_LOOSE_SIGNATURE = re.compile(r"^--\s*$")
_SHORT_SIGNATURE_LINES = 4
# The phone's own line, as the last line of the text; "Надіслано з Нової пошти…" is content.
_MOBILE_SIGNATURE = re.compile(
    r"^(sent from my \w+( \w+)?|sent from (mail|outlook|yahoo mail)( for \w+)?"
    r"|get outlook for \w+"
    r"|(отправлено|отправлено из|отправлено с|надіслано з|відправлено з)"
    r" (моего |мого )?(iphone|ipad|android|samsung|galaxy|xiaomi|huawei|"
    r"мобильного( телефона| устройства)?|мобільного( телефону| пристрою)?|"
    r"телефона|телефону|смартфона|смартфону|mail\.ru|яндекс\.почты|почты mail\.ru|"
    r"yandex|outlook|gmail)( \w+)?)[.!]?$",
    re.IGNORECASE,
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


def _next_line(lines: list[str], index: int) -> str:
    return next((line.strip() for line in lines[index + 1 :] if line.strip()), "")


def _header_cluster(lines: list[str], index: int) -> bool:
    """A quoted message's headers start here: From and Sent/Date lines, and a To/Subject line
    or an address in From (a letter's own "Від: …" / "Дата: …" lines have neither)."""
    names: set[str] = set()
    has_address = False
    for line in lines[index : index + 6]:
        match = _HEADER_LINE.match(line.strip())
        if match is None:
            break
        name = match.group("name").lower()
        names.add(name)
        has_address = has_address or (name in _FROM_HEADERS and "@" in line)
    if not names:
        return False
    if _next_line(lines, index + len(names) - 1).startswith(">"):
        return True
    quoted_headers = bool(names & _FROM_HEADERS) and bool(names & _DATE_HEADERS)
    return quoted_headers and (has_address or bool(names - _FROM_HEADERS - _DATE_HEADERS))


def _quote_starts(lines: list[str], index: int) -> bool:
    line = lines[index].strip()
    if _QUOTE_SEPARATOR.match(line):
        return True
    if _ATTRIBUTION.match(line):
        return bool(_ATTRIBUTION_DETAIL.search(line)) or _next_line(lines, index).startswith(">")
    if _OUTLOOK_RULE.match(line):
        return _header_cluster(
            lines, index + 1 + next((i for i, rest in enumerate(lines[index + 1 :]) if rest.strip()), 0)
        )
    return _header_cluster(lines, index)


def _cut_signature(kept: list[str]) -> list[str]:
    for index in range(len(kept) - 1, 0, -1):
        line = kept[index]
        if _SIGNATURE.match(line):
            return kept[:index]
        if _LOOSE_SIGNATURE.match(line):
            rest = [rest for rest in kept[index + 1 :] if rest.strip()]
            if len(rest) <= _SHORT_SIGNATURE_LINES and all(len(r.strip()) <= 60 for r in rest):
                return kept[:index]
            break
    return kept


def _trim_end(kept: list[str]) -> list[str]:
    while kept and (not kept[-1].strip() or kept[-1].lstrip().startswith(">")):
        kept.pop()
    return kept


def _forwards_before_quoting(text: str) -> bool:
    """Whether a forwarded message starts before anything our rules take for quoted history."""
    if not _FORWARD_ANYWHERE.search(text):
        return False  # the usual case, found without walking the lines
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if _FORWARD_MARKER.match(line.strip()):
            return True
        if index and any(k.strip() for k in lines[:index]) and _quote_starts(lines, index):
            return False
    return False


def strip_quoted(text: str, reply: bool = True, forward: bool = False) -> str:
    """Only what is new in a reply: quoted history, reply headers and signatures cut off.

    `reply=False` (a first message): only our strict cut points apply, not the library's
    looser reply headers ("From: Kyiv / To: Lviv" in a first message is content).
    `forward=True` (a `Fwd:` subject), or a forwarded message's marker before any quoting:
    nothing is cut, the forwarded text is what the customer sends us."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if forward or _forwards_before_quoting(text):
        return text.strip()
    latest: str | None = None
    if reply:
        try:
            latest = latest_reply(text)
        except (ValueError, IndexError, AttributeError, TypeError):
            # The library is best effort; our own cut below still applies.
            latest = None
    candidate = latest if latest and latest.strip() else text
    lines = candidate.split("\n")
    kept: list[str] = []
    for index, line in enumerate(lines):
        if kept and any(k.strip() for k in kept) and _quote_starts(lines, index):
            break
        kept.append(line)
    kept = _trim_end(_cut_signature(_trim_end(kept)))
    if len(kept) > 1 and _MOBILE_SIGNATURE.match(kept[-1].strip()):
        kept = _trim_end(kept[:-1])
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
