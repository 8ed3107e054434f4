"""Email decoding without servers: the corpus, quoting, kinds, subjects, outgoing mail."""

from __future__ import annotations

import base64
import email.header
import email.policy
import hashlib
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from channels.email.decode import EmailDecoder, pick_kind
from channels.email.ingest import intake_key
from channels.email.parse import clean_subject, decode_bytes, lead_token, message_ids, parse_email
from channels.email.smtp import compose, outbox_id_of, reply_subject
from channels.email.text import _reply_parser, guess_language, latest_reply, strip_quoted
from hub.config import EmailSettings
from hub.domain import InboxItem, Lead, LeadKind, LeadStatus, OutboxItem
from hub.errors import DecodeError

CORPUS = Path(__file__).resolve().parents[1] / "data" / "email"


def _item(raw: bytes, name: str = "x") -> InboxItem:
    return InboxItem(1, "email", name, raw, datetime(2026, 11, 23, tzinfo=UTC))


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.eml")), ids=lambda p: p.name)
def test_corpus_message_becomes_lead_or_is_quarantined_with_reason(path: Path) -> None:
    decoder = EmailDecoder(EmailSettings())
    if path.name.startswith("lead-"):
        inbound = decoder(_item(path.read_bytes(), path.name))
        assert inbound.sender.value and "@" in inbound.sender.value
        assert inbound.text.strip()
        assert "\ufffd" not in inbound.subject
    else:
        assert path.name.startswith("quarantine-")
        with pytest.raises(DecodeError) as caught:
            decoder(_item(path.read_bytes(), path.name))
        assert str(caught.value).strip()


def test_corpus_details() -> None:
    decoder = EmailDecoder(EmailSettings())

    def decode(name: str):  # type: ignore[no-untyped-def]
        return decoder(_item((CORPUS / name).read_bytes(), name))

    gmail = decode("lead-gmail-reply-uk.eml")
    assert gmail.text == "Дякую, чекаю."
    assert gmail.thread.lead_number == 77
    assert gmail.thread.message_ids == ("hub.0123456789abcdef0123456789abcdef@example.com",)
    assert gmail.own_refs == ("CAF2n=Qk8W5hX1@mail.gmail.com",)
    assert gmail.language == "uk"
    outlook = decode("lead-outlook-html-only-cp1251.eml")
    assert outlook.subject == "Счёт на оплату"
    assert "Прошу выставить счёт." in outlook.text and "Sent:" not in outlook.text
    assert decode("lead-thunderbird-koi8r-8bit.eml").text == "Заказ не пришёл уже неделю."
    assert decode("lead-yandex-reply-quoted.eml").text == "Спасибо, всё получила."
    assert decode("lead-mailru-iso8859-5.eml").subject == "Повернення товару"
    (photo,) = decode("lead-apple-rfc2231-filename.eml").attachments
    assert photo.name == "Фото упаковки.jpg" and photo.ref.startswith("sha256:")
    assert decode("lead-no-message-id.eml").own_refs == ()
    assert "boundary" in decode("lead-broken-boundary.eml").text
    phishing = decode("lead-html-phishing.eml").html.lower()
    for bad in ("javascript:", "onload", "<svg", "<form", "<object", "data:text"):
        assert bad not in phishing


def test_every_inline_text_part_and_forwarded_message_is_kept() -> None:
    decoder = EmailDecoder(EmailSettings())
    apple = decoder(_item((CORPUS / "lead-apple-text-around-inline-image.eml").read_bytes()))
    assert apple.text == (
        "Here is a photo of the broken part:\n\nAnd the serial number is SN-12345. Please replace it."
    )
    assert [a.name for a in apple.attachments] == ["IMG_0001.jpg"]
    forwarded = decoder(_item((CORPUS / "lead-forwarded-with-inner-attachment.eml").read_bytes()))
    assert forwarded.text == (
        "FYI see below\n\nForwarded message — From: Boss <boss@corp.com> | Subject: Важливо\n\nПривет"
    )
    assert [a.name for a in forwarded.attachments] == ["inner.pdf"]


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
@pytest.mark.parametrize("charset", ["koi8-r", "koi8-u", "cp866", "iso-8859-5", "windows-1251", "utf-8"])
def test_raw_8bit_headers_are_read_in_their_charset(charset: str, declared: bool) -> None:
    ukrainian = charset == "koi8-u"
    subject = "Не працює лічильник" if ukrainian else "Не работает счётчик"
    name = "Олена Петренко" if ukrainian else "Иван Петров"
    body_charset = charset if declared else "us-ascii"
    raw = (
        f"From: {name} <o@example.com>\r\nSubject: {subject}\r\n"
        f"Content-Type: text/plain; charset={body_charset}\r\n\r\nhi\r\n"
    ).encode(charset)
    parsed = parse_email(raw)
    assert (parsed.subject, parsed.sender_name) == (subject, name)


def test_strip_quoted_cuts_history_and_signatures() -> None:
    assert strip_quoted("New text\n\nOn Tue, Bob <b@x.com> wrote:\n> old\n> older") == "New text"
    assert strip_quoted("Привіт\n\n-- \nОлена\n+380") == "Привіт"
    assert strip_quoted("Ответ\n\n-----Original Message-----\nFrom: x\nold") == "Ответ"
    assert strip_quoted("Ок\n\nВт, 24 нояб. 2026 г. в 10:00, Support <s@example.com>:\n> стар") == "Ок"
    assert strip_quoted("Дякую\n\nSent from my iPhone") == "Дякую"
    assert strip_quoted("> only a quote") == "> only a quote"
    assert strip_quoted("Ок\n\nОтправлено с iPhone") == "Ок"
    assert strip_quoted("Так\n\nНадіслано з мого iPhone\n\n> old") == "Так"
    assert (
        strip_quoted("Нове\n\nВід: Support <s@example.com>\nНадіслано: 24 листопада\nКому: o@x\nТема: Re")
        == "Нове"
    )
    assert strip_quoted("Нове\nУ вт, 24 лист. Support пише:\n> старе") == "Нове"
    assert strip_quoted("Hi\n--\nBob\n+1 555") == "Hi"
    assert (
        strip_quoted("Так\n\n1 груд. 2026 р. о 10:00 Support <s@example.com> написав(ла):\n\nстаре") == "Так"
    )
    assert strip_quoted("Да\n\n01.12.2026 10:00, Support писал(а):\n> старое") == "Да"


def test_an_html_only_ios_reply_in_ukrainian_loses_its_quoted_history() -> None:
    # iOS Mail's Ukrainian attribution: the whole quoted history was kept as the customer's text.
    html = (
        '<html><body dir="auto">Так, підходить.<br><br><div dir="ltr">Надіслано з iPhone</div>'
        '<div dir="ltr"><br><blockquote type="cite">1 груд. 2026 р. о 10:00 Support '
        "&lt;support@example.com&gt; написав(ла):<br><br></blockquote></div>"
        '<blockquote type="cite"><div dir="ltr">Наш майстер прийде в четвер.</div></blockquote></body></html>'
    )
    raw = (
        "From: o@example.com\r\nSubject: Re: Лічильник [#L-5]\r\nIn-Reply-To: <a@b>\r\n"
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + base64.encodebytes(html.encode())
    assert EmailDecoder(EmailSettings())(_item(raw)).text == "Так, підходить."


@pytest.mark.parametrize("reply", [True, False])
@pytest.mark.parametrize(
    "text",
    [
        # Nova Poshta, the delivery company, is not a phone's signature.
        "Добрий день!\nНадіслано з Нової пошти 5 днів тому, досі не отримала.\nНомер ТТН 20450000000000.\nДякую.",
        "Директору ТОВ «Сервіс»\nВід: Петренко Іван Іванович\nЗАЯВА\nПрошу замінити товар.",
        "Добрый день.\nОт: ООО Ромашка\nКому: директору\nПрошу выставить счёт.",
        "Ось мої дані:\n—\nІм'я: Олена\nТелефон: 067 123 45 67",
        "Ось що майстер написав:\nзамінити насос і фільтр",
        "Відправлено з мобільного застосунку банку платіж 500 грн.\nПеревірте, будь ласка.",
    ],
    ids=["nova-poshta", "vid-in-a-letter", "ot-komu", "em-dash", "napysav", "mobile-app"],
)
def test_strip_quoted_keeps_content_that_only_looks_like_quoting(text: str, reply: bool) -> None:
    assert strip_quoted(text, reply=reply) == text


def test_a_first_message_is_not_cut_at_reply_headers_of_the_library() -> None:
    text = "Маршрут доставки:\nFrom: Kyiv\nTo: Lviv\nПрошу розрахувати вартість."
    decoder = EmailDecoder(EmailSettings())
    head = b"From: o@example.com\r\nSubject: Delivery\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    assert decoder(_item(head + text.encode())).text == text
    reply = head.replace(b"Subject: ", b"In-Reply-To: <a@b>\r\nSubject: ")
    assert decoder(_item(reply + text.encode())).text == "Маршрут доставки:"


@pytest.mark.parametrize(
    "text",
    [
        "Hello,\n\nmy order 7 has not arrived yet. Could you check?\n\nThanks,\nCustomer 7",
        "New text\n\nOn Tue, Bob <b@x.com> wrote:\n> old\n> older",
        "Hi at 10:30\n\n-- \nOlena",
        "Ответ\n\n-----Original Message-----\nFrom: x\nold",
        "a\n\n" + "_" * 40 + "\nFrom: x\nSent: y\nTo: z\n\nold",
        "Neu\n\nVon: a\nGesendet: b\nAn: c\nBetreff: d\n\nalt",
        "Nowy\nOd: a\nstary",
        "Thanks\nBest regards,\nBob\nThis e-mail is confidential. Disclaimer mail",
        "",
        "   \n\n  ",
    ],
)
def test_latest_reply_matches_the_library(text: str) -> None:
    # The shortcut (patterns built once, no signature/disclaimer search, no header search
    # without a colon or dashes) must give exactly what the library's parse_reply gives.
    assert latest_reply(text) == _reply_parser.parse_reply(text=text)


def test_subjects_tokens_and_ids() -> None:
    assert lead_token("Re: Heater [#L-1042]") == 1042
    assert lead_token("about L-1042") is None
    assert clean_subject("RE: Fwd: Re[2]: Heater [#L-5]") == "Heater"
    assert clean_subject("Відп: Котел") == "Котел"
    assert message_ids("<a@b> <c@d>\r\n <a@b>") == ["a@b", "c@d"]
    assert message_ids("bare@id") == ["bare@id"]
    assert decode_bytes("Тест".encode("cp1251"), "us-ascii") == "Тест"
    assert decode_bytes("Тест".encode(), "x-bogus") == "Тест"
    assert guess_language("Добрий день, їжак") == "uk"
    assert guess_language("Здравствуйте, вы") == "ru"
    assert guess_language("Hello") == "en"


def test_kinds_by_address_plus_tag_and_subject_word() -> None:
    kinds = {
        "service@": LeadKind.SERVICE_REQUEST,
        "+repair": LeadKind.SERVICE_REQUEST,
        "warranty": LeadKind.SERVICE_REQUEST,
    }
    assert pick_kind(kinds, ["service@example.com"], "x")[0] == LeadKind.SERVICE_REQUEST
    assert pick_kind(kinds, ["service+x@example.com"], "x")[0] == LeadKind.SERVICE_REQUEST
    assert pick_kind(kinds, ["support+repair@example.com"], "x")[0] == LeadKind.SERVICE_REQUEST
    assert pick_kind(kinds, ["support@example.com"], "Warranty claim")[0] == LeadKind.SERVICE_REQUEST
    assert pick_kind(kinds, ["support@example.com"], "Hello")[0] is None
    assert (
        pick_kind({"service@shop.example": LeadKind.SERVICE_REQUEST}, ["service@other.example"], "")[0]
        is None
    )


def test_automatic_mail_is_recognised() -> None:
    base = b"From: a@example.com\r\nTo: s@example.com\r\nSubject: x\r\n"
    assert parse_email(base + b"\r\nhi").automatic == ""
    assert parse_email(base + b"Auto-Submitted: no\r\n\r\nhi").automatic == ""
    assert parse_email(base + b"Auto-Submitted: auto-replied\r\n\r\nhi").automatic
    assert parse_email(base + b"Precedence: bulk\r\n\r\nhi").automatic
    assert parse_email(base + b"List-Id: <l.example.com>\r\n\r\nhi").automatic
    assert parse_email(base + b"Return-Path: <>\r\n\r\nhi").automatic
    assert parse_email(b"From: MAILER-DAEMON@x.example\r\nSubject: y\r\n\r\nhi").automatic


def test_compose_reply_threads_and_marks_acknowledgements() -> None:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    lead = Lead(7, LeadKind.MESSAGE, "email", "c1", LeadStatus.OPEN, now, now, subject="Re: Heater [#L-7]")
    item = OutboxItem("0" * 31 + "1", "m1", 7, "email", {"text": "Hi <there>\n\nBye", "auto": True}, now)
    msg = compose(item, lead, "olena@example.com", "Олена", "Support <support@example.com>", ["a@x", "b@x"])
    assert msg["Subject"] == reply_subject(lead) == "Re: Heater [#L-7]"
    assert msg["In-Reply-To"] == "<b@x>" and msg["References"] == "<a@x> <b@x>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"] == f"<hub.{item.id}@example.com>"
    assert outbox_id_of(f"hub.{item.id}@example.com") == item.id
    html = msg.get_body(("html",))
    assert html is not None and "Hi &lt;there&gt;" in html.get_content()
    assert "Олена" in str(msg["To"])


def test_line_breaks_in_a_sender_name_never_reach_our_headers() -> None:
    evil = base64.b64encode(b"Evil\r\nBcc: victim@evil.example").decode()
    raw = f"From: =?UTF-8?B?{evil}?= <crlf@example.com>\r\nSubject: hi\r\n\r\nhelp\r\n".encode()
    parsed = parse_email(raw)
    assert parsed.sender_name == "Evil Bcc: victim@evil.example"
    now = datetime(2026, 11, 23, tzinfo=UTC)
    lead = Lead(7, LeadKind.MESSAGE, "email", "c1", LeadStatus.OPEN, now, now, subject="a\r\nBcc: x@y")
    item = OutboxItem("0" * 31 + "1", "m1", 7, "email", {"text": "Hi"}, now)
    # A name stored before parsing cleaned it must not break (or inject into) the reply either.
    msg = compose(item, lead, "crlf@example.com", "Evil\r\nBcc: victim@evil.example", "s@example.com", [])
    head = msg.as_bytes().split(b"\r\n\r\n")[0].decode()
    assert "\r\nBcc:" not in head and msg["Bcc"] is None
    assert msg["To"] == '"Evil Bcc: victim@evil.example" <crlf@example.com>'


def test_fetch_response_parsing_and_uid_sets() -> None:
    from channels.email.imap import _uid_set, parse_fetch

    lines = [
        b"1 FETCH (UID 7 BODY[] {5}",
        bytearray(b"hello"),
        b")",
        b"2 FETCH (BODY[] {3}",  # some servers put the UID after the literal
        bytearray(b"abc"),
        b" UID 9)",
        b"Fetch completed.",
    ]
    assert [(f.uid, f.raw) for f in parse_fetch(lines)] == [(7, b"hello"), (9, b"abc")]
    assert _uid_set([1, 2, 3, 7, 9, 10]) == "1:3,7,9:10"
    assert _uid_set([5]) == "5"


def test_sanitized_html_keeps_no_text_of_elements_a_browser_does_not_show() -> None:
    html = (
        "<html><head><title>Замовлення №5</title><style>p{color:red}</style>"
        "<script>alert(1)</script></head><body><p>Доброго дня</p>"
        "<noscript>Увімкніть JavaScript</noscript></body></html>"
    )
    raw = (
        "From: o@example.com\r\nSubject: x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html
    ).encode()
    parsed = parse_email(raw)
    assert parsed.html == "<p>Доброго дня</p>"
    assert parsed.text == "Доброго дня"


def test_backslashes_next_to_an_encoded_word_are_kept_verbatim() -> None:
    raw = (
        b"From: o@example.com\r\n"
        b"Subject: =?UTF-8?B?0J/QvtC80LjQu9C60LA=?= C:\\Users\\olena\\Documents \\u0041\r\n\r\nhi\r\n"
    )
    assert parse_email(raw).subject == "Помилка C:\\Users\\olena\\Documents \\u0041"


@pytest.mark.parametrize("charset", ["utf-8", "windows-1251"])
def test_a_raw_8bit_attachment_filename_is_read_as_text(charset: str) -> None:
    raw = (
        b'From: o@example.com\r\nSubject: x\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhi\r\n"
        b'--b\r\nContent-Type: application/msword; name="' + "Рахунок.doc".encode(charset) + b'"\r\n'
        b'Content-Disposition: attachment;\r\n filename="' + "Рахунок.doc".encode(charset) + b'"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n"
    )
    (attachment,) = parse_email(raw).attachments
    assert (attachment.name, attachment.content_type) == ("Рахунок.doc", "application/msword")


_INVITE = (
    "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VTIMEZONE\r\nTZID:Europe/Kyiv\r\n"
    "BEGIN:STANDARD\r\nDTSTART:19701025T040000\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n"
    'BEGIN:VEVENT\r\nORGANIZER;CN="Олена: офіс":mailto:o@example.com\r\n'
    "DTSTART;TZID=Europe/Kyiv:20261201T100000\r\nSUMMARY:Заміна лічильника\\, квартира 5\r\n"
    "LOCATION:вул. Хрещатик 1\\; \r\n під'їзд 2\r\nBEGIN:VALARM\r\nSUMMARY:nag\r\nEND:VALARM\r\n"
    "END:VEVENT\r\nEND:VCALENDAR\r\n"
)


def test_a_calendar_invitation_is_kept_as_an_attachment_with_readable_text() -> None:
    decoder = EmailDecoder(EmailSettings())
    raw = (
        "From: o@example.com\r\nSubject: Запрошення\r\n"
        "Content-Type: text/calendar; charset=utf-8; method=REQUEST\r\n\r\n" + _INVITE
    ).encode()
    inbound = decoder(_item(raw))
    assert inbound.text == (
        "Calendar invitation\nEvent: Заміна лічильника, квартира 5\n"
        "Starts: 2026-12-01 10:00 Europe/Kyiv\nLocation: вул. Хрещатик 1; під'їзд 2"
    )
    (invite,) = inbound.attachments
    assert (invite.name, invite.content_type, invite.size) == (
        "invite.ics",
        "text/calendar",
        len(_INVITE.encode()),
    )
    alongside = (
        'From: o@example.com\r\nSubject: Re: Запрошення\r\nContent-Type: multipart/alternative; boundary="a"\r\n'
        "\r\n--a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nЗустрінемось у вівторок.\r\n"
        "--a\r\nContent-Type: text/calendar; charset=utf-8; method=REQUEST\r\n\r\n" + _INVITE + "--a--\r\n"
    ).encode()
    inbound = decoder(_item(alongside))
    assert inbound.text == "Зустрінемось у вівторок."
    assert [(a.name, a.content_type) for a in inbound.attachments] == [("invite.ics", "text/calendar")]


def test_intake_key_is_the_content_with_a_message_id_else_the_bytes() -> None:
    mail = b"From: o@example.com\r\nSubject: x\r\nMessage-ID: <1@example.com>\r\n\r\nHello\r\n"
    received = b"Received: from mx2.example.net by mx.example.com\r\n"

    def key(raw: bytes) -> str:
        return intake_key(parse_email(raw), hashlib.sha256(raw).hexdigest())

    assert key(received + mail) == key(mail) == key(mail.replace(b"\r\n", b"\n"))
    assert key(mail).startswith("mid:")
    assert key(mail) != key(mail.replace(b"Hello", b"Hello again"))
    assert key(mail) != key(mail.replace(b"o@example.com", b"p@example.com"))
    bare = mail.replace(b"Message-ID: <1@example.com>\r\n", b"")
    assert key(bare).startswith("bytes:") and key(bare) != key(received + bare)


def _calendar_mail(ics: bytes, subject: str = "Запрошення", method: str = "REQUEST") -> bytes:
    head = (
        f"From: o@example.com\r\nSubject: {subject}\r\n"
        f"Content-Type: text/calendar; charset=utf-8; method={method}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode()
    return head + base64.encodebytes(ics)


def _vcalendar(*events: str, method: str = "REQUEST") -> bytes:
    body = "".join(f"BEGIN:VEVENT\r\n{event}END:VEVENT\r\n" for event in events)
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:{method}\r\n{body}END:VCALENDAR\r\n".encode()


def test_a_calendar_line_folded_inside_a_utf8_character_reads_whole() -> None:
    # RFC 5545 3.1 folds at 75 octets, which may split a multi-octet character: such an
    # invitation was read as koi8 mojibake from end to end.
    summary = "SUMMARY:Заміна лічильника\\, квартира 5, під'їзд 2".encode()
    split = next(i for i in range(60, len(summary)) if summary[i] & 0xC0 == 0x80)
    folded = summary[:split] + b"\r\n " + summary[split:]
    ics = _vcalendar("UID:1\r\nDTSTART:20261201T080000Z\r\nSUMMARY:x\r\n").replace(b"SUMMARY:x", folded)
    inbound = EmailDecoder(EmailSettings())(_item(_calendar_mail(ics)))
    assert inbound.text == (
        "Calendar invitation\nEvent: Заміна лічильника, квартира 5, під'їзд 2\nStarts: 2026-12-01 08:00 UTC"
    )


def test_every_event_of_a_calendar_is_described_with_its_own_start() -> None:
    ics = _vcalendar(
        'UID:a\r\nDTSTART;TZID="Europe/Kyiv":20261201T100000\r\nSUMMARY:Огляд\\; замір\r\n'
        "LOCATION:Київ\\, вул. Хрещатик 1\r\n",
        "UID:b\r\nDTSTART;VALUE=DATE:20261203\r\nSUMMARY:Монтаж\\nдень 1\r\n",
        "UID:c\r\nDTSTART;TZID=FLE Standard Time:20261205T093000\r\nsummary:Здача\\\\акт\r\n",
        # A moved occurrence of series "a" repeats it: the series is described once.
        "UID:a\r\nRECURRENCE-ID;TZID=Europe/Kyiv:20261208T100000\r\n"
        "DTSTART;TZID=Europe/Kyiv:20261208T120000\r\nSUMMARY:Огляд\r\n",
        method="PUBLISH",
    )
    inbound = EmailDecoder(EmailSettings())(_item(_calendar_mail(ics, method="PUBLISH")))
    assert inbound.text == (
        "Calendar event\n"
        "Event: Огляд; замір\nStarts: 2026-12-01 10:00 Europe/Kyiv\nLocation: Київ, вул. Хрещатик 1\n\n"
        "Event: Монтаж день 1\nStarts: 2026-12-03\n\n"
        "Event: Здача\\акт\nStarts: 2026-12-05 09:30 FLE Standard Time"
    )


def test_a_cancellation_is_named_by_the_part_when_the_calendar_does_not_say() -> None:
    ics = _vcalendar("UID:1\r\nDTSTART:20261201T100000\r\nSUMMARY:Візит майстра\r\n").replace(
        b"METHOD:REQUEST\r\n", b""
    )
    inbound = EmailDecoder(EmailSettings())(_item(_calendar_mail(ics, method="CANCEL")))
    assert inbound.text == "Calendar cancellation\nEvent: Візит майстра\nStarts: 2026-12-01 10:00"


@pytest.mark.parametrize(
    "ics",
    [
        b"this is not a calendar at all",
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:cut short\r\n",
        b"BEGIN:VCALENDAR\r\nBEGIN:VTIM:EZONE\r\nTZID:X\r\nEND:VTIMEZONE\r\nEND:VCALENDAR\r\n",
        b"BEGIN:VCALENDAR\r\n" + b"BEGIN:X-A\r\n" * 300 + b"END:X-A\r\n" * 300 + b"END:VCALENDAR\r\n",
    ],
    ids=["garbage", "unterminated", "mismatched-end", "too-deep"],
)
def test_an_unreadable_calendar_keeps_the_mail_and_its_file(ics: bytes) -> None:
    inbound = EmailDecoder(EmailSettings())(_item(_calendar_mail(ics, subject="")))
    assert inbound.text.startswith("Calendar invitation\n(")
    (invite,) = inbound.attachments
    assert (invite.name, invite.size) == ("invite.ics", len(ics))


def test_a_whole_exported_calendar_is_named_not_read() -> None:
    events = [f"UID:{i}\r\nDTSTART:20261201T100000Z\r\nSUMMARY:Подія {i}\r\n" for i in range(3000)]
    started = time.perf_counter()
    ics = _vcalendar(*events, method="PUBLISH")
    inbound = EmailDecoder(EmailSettings())(_item(_calendar_mail(ics, method="PUBLISH")))
    assert time.perf_counter() - started < 1.0
    assert inbound.text == "Calendar event\n(a large calendar: 3000 events; it is attached)"


def test_a_few_events_beyond_the_first_five_are_counted() -> None:
    events = [f"UID:{i}\r\nDTSTART:20261201T10000{i}Z\r\nSUMMARY:Подія {i}\r\n" for i in range(8)]
    text = EmailDecoder(EmailSettings())(_item(_calendar_mail(_vcalendar(*events)))).text
    assert text.count("Event: ") == 5 and text.endswith("… and 3 more event(s)")


def _rfc2047_text(value: str) -> str:
    """A header value as an RFC 2047 reader (a mail client) shows it."""
    return str(email.header.make_header(email.header.decode_header(value.replace("\r\n", ""))))


def test_outgoing_cyrillic_subjects_and_names_keep_every_space() -> None:
    # The stdlib's folder put a space at a fold between two encoded words, where mail clients
    # drop it: about one long Cyrillic subject in five read "майстер—12" at the customer's.
    words = ["Не", "працює", "лічильник", "гарячої", "води,", "5", "—", "«сьогодні»", "ТОВ", "a", "b"]
    rng = random.Random(7)
    now = datetime(2026, 11, 23, tzinfo=UTC)
    for _ in range(300):
        subject = " ".join(rng.choice(words) for _ in range(rng.randint(1, 50)))
        name = " ".join(rng.choice(words) for _ in range(rng.randint(1, 14)))
        lead = Lead(12, LeadKind.MESSAGE, "email", "c1", LeadStatus.OPEN, now, now, subject=subject)
        item = OutboxItem("0" * 31 + "1", "m1", 12, "email", {"text": "Добрий день"}, now)
        raw = compose(item, lead, "olena@example.com", name, "Support <support@example.com>", []).as_bytes()
        head = email.message_from_bytes(raw, policy=email.policy.compat32)
        assert _rfc2047_text(head["Subject"]) == reply_subject(lead)
        display, _, address = head["To"].rpartition("<")
        assert (_rfc2047_text(display).strip(), address) == (name, "olena@example.com>")
        assert all(len(line) <= 78 for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n"))
        assert parse_email(raw).subject == reply_subject(lead)


def test_a_long_cyrillic_sender_name_of_ours_keeps_every_space() -> None:
    name = "Служба підтримки клієнтів ТОВ «Київенергосервіс» відділ обслуговування споживачів"
    now = datetime(2026, 11, 23, tzinfo=UTC)
    lead = Lead(12, LeadKind.MESSAGE, "email", "c1", LeadStatus.OPEN, now, now, subject="x")
    item = OutboxItem("0" * 31 + "1", "m1", 12, "email", {"text": "Добрий день"}, now)
    raw = compose(item, lead, "olena@example.com", "", f"{name} <support@example.com>", []).as_bytes()
    parsed = parse_email(raw)
    assert (parsed.sender_name, parsed.sender) == (name, "support@example.com")
    head = email.message_from_bytes(raw, policy=email.policy.compat32)
    display, _, address = head["From"].rpartition("<")
    assert (_rfc2047_text(display).strip(), address) == (name, "support@example.com>")


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('"ТОВ \\"Ромашка\\"" <o@example.com>', 'ТОВ "Ромашка"'),
        (
            "=?utf-8?B?" + base64.b64encode('ТОВ "Ромашка"'.encode()).decode() + "?= <o@example.com>",
            'ТОВ "Ромашка"',
        ),
        ('"\\"Олена\\"" <o@example.com>', "Олена"),
        ('"Олена" <o@example.com>', "Олена"),
    ],
    ids=["escaped-quotes", "encoded-word", "quoted-twice", "quoted"],
)
def test_quotes_that_belong_to_a_sender_name_are_kept(header: str, name: str) -> None:
    # A company name ending in a quote lost it: 'ТОВ "Ромашка' in the card and in our replies.
    raw = f"From: {header}\r\nSubject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhi\r\n"
    assert parse_email(raw.encode()).sender_name == name


_FORWARDED = (
    "Від: Менеджер Магазину <manager@shop.example>\nDate: пн, 23 лист. 2026 р. о 10:00\n"
    "Subject: Повернення\nTo: <olena@example.com>\n\n"
    "Олено, гроші за замовлення 1234 повернемо до 30 листопада."
)


@pytest.mark.parametrize(
    ("subject", "text"),
    [
        ("Повернення", f"Пересилаю лист менеджера.\n\n---------- Forwarded message ---------\n{_FORWARDED}"),
        ("Fwd: Повернення", f"Дивіться нижче\n\n-------- Пересылаемое сообщение --------\n{_FORWARDED}"),
        ("Повернення", f"Ось лист\n\nBegin forwarded message:\n\n{_FORWARDED}"),
        ("ПЕРЕСЛ: Повернення", f"Пересилаю\n\n________________________________\n{_FORWARDED}"),
        ("FW: Повернення", f"-----Original Message-----\n{_FORWARDED}"),
    ],
    ids=["gmail", "yandex-fwd", "apple", "outlook-uk", "outlook-old"],
)
def test_an_inline_forward_keeps_the_forwarded_text(subject: str, text: str) -> None:
    # The forwarded manager's promise was cut as if it were quoted history: staff saw only
    # "Пересилаю лист менеджера." in the card.
    head = f"From: o@example.com\r\nSubject: {subject}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    inbound = EmailDecoder(EmailSettings())(_item((head + text).encode()))
    assert inbound.text == text


def test_a_reply_above_an_older_forward_still_loses_its_quoted_history() -> None:
    text = (
        "Дякую!\n\nПн, 23 лист. 2026 р. о 10:00 Support <s@example.com> пише:\n"
        f"> ---------- Forwarded message ---------\n> {_FORWARDED}"
    )
    assert strip_quoted(text) == "Дякую!"
    assert clean_subject("ПЕРЕСЛ: Відп: Рахунок") == "Рахунок"


@pytest.mark.parametrize(
    ("sender", "to", "who"),
    [
        ("WordPress <wordpress@shop.example>", "support@example.com", "ivan@example.net"),
        ("Сайт <no-reply@forms.example>", "support@example.com", "ivan@example.net"),
        ("'Іван' via Support <support@groups.example>", "support@example.com", "ivan@example.net"),
        ("Сайт компанії <info@example.com>", "support@example.com", "ivan@example.net"),
        # A person's own Reply-To is where replies go, not who they are: unlike From, no
        # receiving server checks it, so it must not make a stranger's mail a known customer's.
        ("Mallory <mallory@example.org>", "support@example.com", "mallory@example.org"),
    ],
    ids=["wordpress", "no-reply", "list-via", "own-domain", "person"],
)
def test_reply_to_names_the_customer_only_behind_a_relay(sender: str, to: str, who: str) -> None:
    raw = (
        f"From: {sender}\r\nTo: {to}\r\nReply-To: Іван <ivan@example.net>\r\nSubject: x\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nЗаявка з сайту\r\n"
    ).encode()
    assert parse_email(raw).sender == who


@pytest.mark.parametrize("label", ["windows-1251", "koi8-r", "iso-8859-1", "windows-1252"])
def test_utf8_labelled_as_a_single_byte_charset_is_read_as_utf8(label: str) -> None:
    # Web forms and scripts send UTF-8 labelled windows-1251 or latin-1: "Р”РѕР±СЂРёР№ РґРµРЅСЊ".
    text, subject = "Добрий день! Прошу зателефонувати.", "Замовлення №5"
    word = base64.b64encode(subject.encode()).decode()
    raw = (
        f"From: o@example.com\r\nSubject: =?{label}?B?{word}?=\r\n"
        f"Content-Type: text/plain; charset={label}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + text.encode()
    parsed = parse_email(raw)
    assert (parsed.subject, parsed.text) == (subject, text)


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("windows-1251", "Привіт, як справи? Її ЄҐ «ТОВ» — №5, ЁЂЃ"),
        ("koi8-u", "Здрастуйте, лічильник не працює"),
        ("iso-8859-1", "Grüße aus Köln"),
        ("cp866", "Привет"),
    ],
)
def test_text_in_its_declared_single_byte_charset_stays_as_it_is(charset: str, text: str) -> None:
    assert decode_bytes(text.encode(charset), charset) == text


def test_an_unreadable_calendar_leaves_its_content_out_of_the_log(caplog: pytest.LogCaptureFixture) -> None:
    # The library's error quotes the line it could not read: a customer's text and address at INFO.
    ics = b"BEGIN:VCALENDAR\r\nolena@example.com call me at 067 123 45 67\r\nEND:VCALENDAR\r\n"
    with caplog.at_level("INFO", logger="channels.email.parse"):
        EmailDecoder(EmailSettings())(_item(_calendar_mail(ics)))
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "calendar part could not be read" in logged
    assert "olena" not in logged and "067" not in logged
