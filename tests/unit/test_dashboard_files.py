"""How the dashboard serves a customer's file: which types show inline, and the file's name."""

from __future__ import annotations

from hub.web.dashboard.files import content_disposition, served_type


def test_a_files_name_is_sent_as_ascii_with_the_real_name_in_utf8() -> None:
    header = content_disposition("attachment", 'Звіт "остаточний"\r\n.html')
    assert header.isascii() and "\r" not in header and "\n" not in header
    assert header.startswith('attachment; filename="____ ______________.html"; ')
    assert "; filename*=UTF-8''%D0%97%D0%B2%D1%96%D1%82%20%22" in header and header.endswith("%0D%0A.html")
    assert (
        content_disposition("inline", "  ") == "inline; filename=\"attachment\"; filename*=UTF-8''attachment"
    )


def test_only_safe_types_are_shown_inline_and_text_keeps_a_known_charset() -> None:
    assert served_type("IMAGE/PNG") == "image/png"
    assert served_type("application/pdf") == "application/pdf"
    assert served_type("text/plain; charset=KOI8-U") == "text/plain; charset=koi8-u"
    assert served_type("text/plain") == "text/plain; charset=utf-8"
    assert served_type("text/plain; charset=x-unknown") is None
    assert served_type('text/plain; charset="utf-8\\"; x') is None
    for dangerous in ("image/svg+xml", "text/html; charset=utf-8", "application/xhtml+xml", "text/xml"):
        assert served_type(dangerous) is None
