"""Hostile input against the public forms and the REST API: a clear 4xx and nothing stored,
or stored inert. Runs against a real in-process hub over loopback HTTP and a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import markupsafe
import pytest

from hub.app import Hub
from tests.hostile.conftest import assert_json_error, stored

VALID: dict[str, Any] = {"name": "Олена", "email": "olena@example.com", "message": "Привіт!"}
FIELDS = ("name", "email", "phone", "telegram", "subject", "message")

OPERATORS: list[Any] = [
    {"$gt": ""},
    {"$ne": None},
    {"$where": "function() { return true; }"},
    {"$regex": ".*"},
    {"nested": {"$gt": ""}},
    ["$gt", ""],
    [{"$where": "sleep(1000)"}],
    [],
    {},
    12,
    1.5,
    True,
]


# --- NoSQL operator injection ------------------------------------------------------------


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", OPERATORS, ids=lambda v: json.dumps(v)[:30])
async def test_form_rejects_operator_objects_in_any_field(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, field: str, value: Any
) -> None:
    before = await stored(hub)
    resp = await http.post(f"{base_url}/forms/contact", json={**VALID, field: value})
    body = await assert_json_error(resp, 422)
    assert field in body["fields"]  # type: ignore[operator]
    assert await stored(hub) == before


@pytest.mark.parametrize("field", [*FIELDS, "kind", "form", "external_id"])
@pytest.mark.parametrize("value", OPERATORS[:7], ids=lambda v: json.dumps(v)[:30])
async def test_api_rejects_operator_objects_in_any_field(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], field: str, value: Any
) -> None:
    before = await stored(hub)
    resp = await http.post(f"{base_url}/api/v1/leads", json={**VALID, field: value}, headers=auth)
    await assert_json_error(resp, 422)
    assert await stored(hub) == before


async def test_operator_looking_strings_are_stored_as_plain_text(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str]
) -> None:
    text = '{"$where": "sleep(1000)"} $gt $ne {"$regex": ".*"}'
    resp = await http.post(f"{base_url}/forms/contact", json={**VALID, "subject": "$gt", "message": text})
    assert resp.status == 201, await resp.text()
    lead = (await resp.json())["lead"]
    detail = await (await http.get(f"{base_url}/api/v1/leads/{lead}", headers=auth)).json()
    assert detail["subject"] == "$gt"
    assert [m["text"] for m in detail["messages"]] == [text]


async def test_api_filters_with_operators_are_plain_strings(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str]
) -> None:
    await http.post(f"{base_url}/forms/contact", json=VALID)
    for params in (
        {"assignee[$ne]": "x"},
        {"assignee": '{"$ne": null}'},
        {"q": '{"$where": "1"}'},
        {"team": "$gt"},
        {"channel": '{"$gt": ""}'},
    ):
        resp = await http.get(f"{base_url}/api/v1/leads", params=params, headers=auth)
        assert resp.status == 200, params
        body = await resp.json()
        # Either ignored (an unknown parameter) or matched literally: never "everything but x".
        if "assignee[$ne]" not in params:
            assert body["items"] == [], params


# --- sizes ----------------------------------------------------------------------------------


async def test_oversized_json_body_is_413_and_stores_nothing(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str]
) -> None:
    before = await stored(hub)
    huge = {**VALID, "message": "x" * (hub.settings.web.max_body_bytes + 10)}
    for url, headers in ((f"{base_url}/forms/contact", {}), (f"{base_url}/api/v1/leads", auth)):
        resp = await http.post(url, json=huge, headers=headers)
        await assert_json_error(resp, 413)
    assert await stored(hub) == before


async def test_oversized_urlencoded_body_is_413(hub: Hub, http: aiohttp.ClientSession, base_url: str) -> None:
    before = await stored(hub)
    data = {**VALID, "message": "я" * hub.settings.web.max_body_bytes}
    resp = await http.post(f"{base_url}/forms/contact", data=data)
    await assert_json_error(resp, 413)
    assert await stored(hub) == before


@pytest.mark.parametrize(
    ("field", "size"), [("name", 201), ("subject", 301), ("message", 10_001), ("email", 300), ("phone", 40)]
)
async def test_oversized_fields_are_422(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], field: str, size: int
) -> None:
    before = await stored(hub)
    value = (
        "a" * (size - 12) + "@example.com"
        if field == "email"
        else "1" * size
        if field == "phone"
        else "a" * size
    )
    for url, headers in ((f"{base_url}/forms/contact", {}), (f"{base_url}/api/v1/leads", auth)):
        resp = await http.post(url, json={**VALID, field: value}, headers=headers)
        await assert_json_error(resp, 422)
    assert await stored(hub) == before


async def test_deeply_nested_json_is_a_client_error(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str]
) -> None:
    before = await stored(hub)
    body = '{"message": ' + "[" * 100_000 + "]" * 100_000 + "}"
    for url, headers in ((f"{base_url}/forms/contact", {}), (f"{base_url}/api/v1/leads", auth)):
        resp = await http.post(url, data=body, headers={**headers, "Content-Type": "application/json"})
        await assert_json_error(resp, (400, 422))
    assert await stored(hub) == before


# --- encodings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "\xff\xfe", "email": "a@example.com", "message": "hi"}',
        b'{"name": "ok", "email": "a@example.com", "message": "\xc3\x28"}',
        b'{"message": "\xed\xa0\x80", "email": "a@example.com"}',
        b"\xef\xbb\xbf\xff",
        b"not json at all",
        b"",
        b'["a", "list"]',
        b'"a string"',
        b"null",
    ],
)
async def test_invalid_json_or_utf8_is_400_or_422(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], raw: bytes
) -> None:
    before = await stored(hub)
    for url, headers in ((f"{base_url}/forms/contact", {}), (f"{base_url}/api/v1/leads", auth)):
        resp = await http.post(url, data=raw, headers={**headers, "Content-Type": "application/json"})
        await assert_json_error(resp, (400, 422))
    assert await stored(hub) == before


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\ud83d"])
async def test_lone_surrogates_in_json_strings_are_422(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], escape: str
) -> None:
    # Valid JSON, but not text that can be stored as UTF-8.
    before = await stored(hub)
    for field in ("name", "message", "subject"):
        raw = json.dumps({**VALID, field: "x"}).replace('"x"', f'"a{escape}b"')
        for url, headers in ((f"{base_url}/forms/contact", {}), (f"{base_url}/api/v1/leads", auth)):
            resp = await http.post(url, data=raw, headers={**headers, "Content-Type": "application/json"})
            await assert_json_error(resp, (400, 422))
    raw = json.dumps({**VALID, "external_id": "x", "form": "y"})
    for replaced in (raw.replace('"x"', '"k\\ud800"'), raw.replace('"y"', '"f\\ud800"')):
        resp = await http.post(
            f"{base_url}/api/v1/leads", data=replaced, headers={**auth, "Content-Type": "application/json"}
        )
        await assert_json_error(resp, (400, 422))
    assert await stored(hub) == before


@pytest.mark.parametrize(
    ("action", "field", "body"),
    [
        ("notes", "text", '{"text": "\\ud800", "author": "olena"}'),
        ("notes", "author", '{"text": "ok", "author": "o\\udfff"}'),
        ("replies", "text", '{"text": "a\\ud83d", "author": "olena"}'),
        ("replies", "author", '{"text": "ok", "author": "\\udfff"}'),
        ("assign", "manager", '{"manager": "olena\\ud800"}'),
        ("assign", "by", '{"manager": "olena", "by": "\\udc00"}'),
    ],
)
async def test_lone_surrogates_in_action_fields_are_422_naming_the_field(
    hub: Hub,
    http: aiohttp.ClientSession,
    base_url: str,
    auth: dict[str, str],
    action: str,
    field: str,
    body: str,
) -> None:
    resp = await http.post(f"{base_url}/forms/contact", json=VALID)
    lead = (await resp.json())["lead"]
    before = await (await http.get(f"{base_url}/api/v1/leads/{lead}", headers=auth)).json()
    resp = await http.post(
        f"{base_url}/api/v1/leads/{lead}/{action}",
        data=body.encode(),
        headers={**auth, "Content-Type": "application/json"},
    )
    error = await assert_json_error(resp, 422)
    assert list(error["fields"]) == [field], error  # type: ignore[call-overload]
    after = await (await http.get(f"{base_url}/api/v1/leads/{lead}", headers=auth)).json()
    assert (after["messages"], after["assignee"]) == (before["messages"], before["assignee"])


@pytest.mark.parametrize(
    "raw",
    [
        b"name=%FF%FE&email=a%40example.com&message=hi",
        b"name=ok&email=a%40example.com&message=%C3%28",
        b"name=\xff&email=a%40example.com&message=hi",
    ],
)
async def test_invalid_utf8_in_urlencoded_form_is_a_client_error(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, raw: bytes
) -> None:
    before = await stored(hub)
    resp = await http.post(
        f"{base_url}/forms/contact",
        data=raw,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    body = await assert_json_error(resp, 400)
    assert body["error"] == "invalid_form"
    assert await stored(hub) == before


async def test_too_many_urlencoded_fields_is_400_too_many_fields(
    hub: Hub, http: aiohttp.ClientSession, base_url: str
) -> None:
    before = await stored(hub)
    data = {**VALID, **{f"extra{i}": "x" for i in range(60)}}
    resp = await http.post(f"{base_url}/forms/contact", data=data)
    body = await assert_json_error(resp, 400)
    assert body["error"] == "too_many_fields"
    assert "UTF-8" not in str(body["detail"]) and "fields" in str(body["detail"])
    assert await stored(hub) == before


MULTIPART_PART = b'--b\r\nContent-Disposition: form-data; name="message"\r\n'


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("multipart/form-data", b"x"),
        ("multipart/form-data; boundary=xyz", b"garbage"),
        ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data\r\n\r\nzz\r\n--b--\r\n"),
        ("multipart/form-data; boundary=b", MULTIPART_PART + b"\r\nno closing boundary"),
        (
            "multipart/form-data; boundary=b",
            MULTIPART_PART + b"Content-Type: text/plain; charset=bogus-cs\r\n\r\nhi\r\n--b--\r\n",
        ),
        (
            "multipart/form-data; boundary=b",
            MULTIPART_PART + b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64\r\n--b--\r\n",
        ),
        (
            "multipart/form-data; boundary=b",
            MULTIPART_PART
            + b"Content-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\n\r\nx\r\n--c--\r\n--b--\r\n",
        ),
        ("multipart/form-data; boundary=b", MULTIPART_PART + b"\r\n\xff\xfe\r\n--b--\r\n"),
        (
            "multipart/form-data; boundary=b",
            MULTIPART_PART + b"Content-Transfer-Encoding: bogus\r\n\r\nhi\r\n--b--\r\n",
        ),
        ("multipart/form-data; boundary=b", MULTIPART_PART + b"X: 1\r\n" * 200 + b"\r\nhi\r\n--b--\r\n"),
    ],
    ids=[
        "no-boundary",
        "no-start",
        "no-name",
        "eof",
        "bogus-charset",
        "bad-base64",
        "nested",
        "not-utf8",
        "bogus-transfer-encoding",
        "too-many-part-headers",
    ],
)
async def test_malformed_multipart_is_400_invalid_form(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, content_type: str, raw: bytes
) -> None:
    before = await stored(hub)
    resp = await http.post(f"{base_url}/forms/contact", data=raw, headers={"Content-Type": content_type})
    body = await assert_json_error(resp, 400)
    assert body["error"] == "invalid_form"
    assert await stored(hub) == before


async def test_well_formed_multipart_form_is_accepted(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str]
) -> None:
    form = aiohttp.FormData()
    for name, value in VALID.items():
        form.add_field(name, value)
    form.add_field("attachment", b"%PDF-1.4", filename="a.pdf", content_type="application/pdf")
    resp = await http.post(f"{base_url}/forms/contact", data=form, headers={"Accept": "application/json"})
    assert resp.status == 201, await resp.text()
    lead = (await resp.json())["lead"]
    detail = await (await http.get(f"{base_url}/api/v1/leads/{lead}", headers=auth)).json()
    assert [m["text"] for m in detail["messages"]] == [VALID["message"]]


# --- header injection ---------------------------------------------------------------------------

INJECTIONS = [
    "Olena\r\nBcc: everyone@example.com",
    "Olena\nSubject: hacked",
    "Olena\rX-Header: 1",
    "Olena\u2028Bcc: x@example.com",
    "Olena\u2029x",
    "Olena\x85Bcc: x@example.com",
    "Olena\x0bx",
    "Olena\x1bx",
]


@pytest.mark.parametrize("value", INJECTIONS, ids=repr)
@pytest.mark.parametrize("field", ["name", "subject"])
async def test_line_breaks_in_one_line_fields_are_rejected(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], field: str, value: str
) -> None:
    before = await stored(hub)
    for url, headers in ((f"{base_url}/forms/contact", {}), (f"{base_url}/api/v1/leads", auth)):
        resp = await http.post(url, json={**VALID, field: value}, headers=headers)
        body = await assert_json_error(resp, 422)
        assert field in body["fields"]  # type: ignore[operator]
    assert await stored(hub) == before


@pytest.mark.parametrize(
    "value",
    [
        "olena@example.com\r\nBcc: all@example.com",
        "olena@example.com\nBcc: all@example.com",
        "olena@example.com, all@example.com",
        "Olena <olena@example.com>",
        "olena@example.com\u2028x",
        "olena\x01@example.com",
        "olena@exa\rmple.com",
    ],
    ids=repr,
)
async def test_email_with_header_tricks_is_rejected(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, value: str
) -> None:
    before = await stored(hub)
    resp = await http.post(f"{base_url}/forms/contact", json={**VALID, "email": value})
    body = await assert_json_error(resp, 422)
    assert "email" in body["fields"]  # type: ignore[operator]
    assert await stored(hub) == before


async def test_multiline_message_is_kept_as_text(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str]
) -> None:
    text = "line one\r\nBcc: x@example.com\r\n\r\nline three"
    resp = await http.post(f"{base_url}/forms/contact", json={**VALID, "message": text})
    assert resp.status == 201
    lead = (await resp.json())["lead"]
    detail = await (await http.get(f"{base_url}/api/v1/leads/{lead}", headers=auth)).json()
    assert detail["messages"][0]["text"] == text.replace("\r\n", "\n")


# --- script injection -----------------------------------------------------------------------------

SCRIPTS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "'><svg onload=alert(1)>",
    "</textarea><script>alert(1)</script>",
    "javascript:alert(1)",
]


@pytest.mark.parametrize("payload", SCRIPTS)
async def test_form_rerender_after_422_escapes_everything(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, payload: str
) -> None:
    data = {"name": payload, "email": payload, "phone": payload, "telegram": payload, "message": payload}
    resp = await http.post(f"{base_url}/forms/contact", data={**data, "message": ""})
    assert resp.status == 422
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert "<script>alert" not in page
    assert "onerror=alert(1)>" not in page and "<img" not in page and "<svg" not in page
    assert str(markupsafe.escape(payload)) in page
    resp = await http.post(
        f"{base_url}/forms/contact", data={**data, "email": "", "phone": "", "telegram": ""}
    )
    page = await resp.text()
    assert resp.status == 422
    assert "<script>alert" not in page and "<img" not in page and "<svg" not in page


@pytest.mark.parametrize("payload", SCRIPTS)
async def test_thank_you_page_and_api_keep_scripts_inert(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], payload: str
) -> None:
    resp = await http.post(
        f"{base_url}/forms/contact",
        data={"name": payload, "email": "x@example.com", "message": payload, "lang": payload},
    )
    assert resp.status == 201
    page = await resp.text()
    assert "<script>alert" not in page and "<img" not in page and "<svg" not in page
    leads = await (await http.get(f"{base_url}/api/v1/leads", headers=auth)).json()
    detail = await (
        await http.get(f"{base_url}/api/v1/leads/{leads['items'][0]['lead']}", headers=auth)
    ).json()
    # Stored verbatim as text (the API is JSON; HTML views escape it when they render).
    assert detail["messages"][0]["text"] == payload
    assert detail["messages"][0]["html"] is None


async def test_form_page_escapes_the_lang_parameter(
    hub: Hub, http: aiohttp.ClientSession, base_url: str
) -> None:
    resp = await http.get(f"{base_url}/forms/contact", params={"lang": '"><script>alert(1)</script>'})
    assert resp.status == 200
    assert "<script>alert" not in await resp.text()


# --- honeypot, unknown forms, media types -------------------------------------------------------------


async def test_honeypot_filled_is_rejected_and_stores_nothing(
    hub: Hub, http: aiohttp.ClientSession, base_url: str
) -> None:
    before = await stored(hub)
    resp = await http.post(f"{base_url}/forms/contact", json={**VALID, "website": "http://spam"})
    assert (await assert_json_error(resp, 400))["error"] == "rejected"
    # A browser's post gets the form again with the reason, in its language, not JSON.
    resp = await http.post(
        f"{base_url}/forms/contact", data={**VALID, "website": "x"}, headers={"Accept-Language": "uk"}
    )
    assert (resp.status, resp.content_type) == (400, "text/html")
    page = await resp.text()
    assert "Звернення схоже на автоматичне" in page and 'value="Олена"' in page
    assert await stored(hub) == before


async def test_unknown_form_is_404(hub: Hub, http: aiohttp.ClientSession, base_url: str) -> None:
    before = await stored(hub)
    for name in ("nope", "..%2f..%2fetc%2fpasswd", "CONTACT", "contact%00"):
        resp = await http.post(f"{base_url}/forms/{name}", json=VALID)
        assert resp.status == 404, name
        resp = await http.get(f"{base_url}/forms/{name}")
        assert resp.status == 404, name
    assert await stored(hub) == before


async def test_unsupported_media_type_is_415(hub: Hub, http: aiohttp.ClientSession, base_url: str) -> None:
    before = await stored(hub)
    resp = await http.post(
        f"{base_url}/forms/contact", data=b"<xml/>", headers={"Content-Type": "application/xml"}
    )
    await assert_json_error(resp, 415)
    assert await stored(hub) == before


async def test_method_not_allowed_names_the_allowed_methods(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str]
) -> None:
    for method, path, allowed in (
        ("DELETE", "/api/v1/leads/L-1", {"GET"}),
        ("PUT", "/api/v1/leads", {"GET", "POST"}),
        ("PUT", "/forms/contact", {"POST"}),
    ):
        resp = await http.request(method, f"{base_url}{path}", headers=auth)
        await assert_json_error(resp, 405)
        assert allowed <= set(resp.headers.get("Allow", "").split(",")), (path, resp.headers)


async def test_bad_idempotency_key_is_422(hub: Hub, http: aiohttp.ClientSession, base_url: str) -> None:
    before = await stored(hub)
    for key in ("short", "a" * 200, "bad key with spaces", "ключ-ключ-ключ"):
        resp = await http.post(
            f"{base_url}/forms/contact",
            json=VALID,
            headers={"Idempotency-Key": key.encode().decode("latin-1")},
        )
        await assert_json_error(resp, 422)
    resp = await http.post(f"{base_url}/forms/contact", json={**VALID, "_token": {"$gt": ""}})
    await assert_json_error(resp, 422)
    assert await stored(hub) == before


async def test_bad_form_token_from_a_browser_shows_the_form_again(
    hub: Hub, http: aiohttp.ClientSession, base_url: str
) -> None:
    before = await stored(hub)
    resp = await http.post(f"{base_url}/forms/contact", data={**VALID, "_token": "bad token", "lang": "en"})
    assert (resp.status, resp.content_type) == (422, "text/html")
    page = await resp.text()
    assert "The form has expired" in page and 'value="olena@example.com"' in page
    # A fresh token, so that sending the form again works.
    assert 'name="_token" value="bad token"' not in page
    assert 'name="_token" value="' in page
    assert await stored(hub) == before


@pytest.mark.parametrize("key", ["x", "short", "", "a" * 129, "bad key with spaces", "key/with/slashes"])
async def test_reply_idempotency_key_must_fit_the_documented_pattern(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], key: str
) -> None:
    lead = (await (await http.post(f"{base_url}/forms/contact", json=VALID)).json())["lead"]
    resp = await http.post(
        f"{base_url}/api/v1/leads/{lead}/replies",
        json={"text": "hi", "author": "olena"},
        headers={**auth, "Idempotency-Key": key},
    )
    body = await assert_json_error(resp, 422)
    assert list(body["fields"]) == ["Idempotency-Key"], body  # type: ignore[call-overload]
    assert [m.direction.value for m in await hub.store.list_messages(int(lead[2:]))] == ["in"]


@pytest.mark.parametrize("key", ["x", "short", "bad key with spaces"])
async def test_api_submission_idempotency_key_must_fit_the_documented_pattern(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], key: str
) -> None:
    before = await stored(hub)
    resp = await http.post(f"{base_url}/api/v1/leads", json=VALID, headers={**auth, "Idempotency-Key": key})
    body = await assert_json_error(resp, 422)
    assert list(body["fields"]) == ["Idempotency-Key"], body  # type: ignore[call-overload]
    assert await stored(hub) == before


@pytest.mark.parametrize("raw_key", [b"reply-\xff-0001", "ключ-ключ-ключ".encode()])
async def test_reply_idempotency_key_with_raw_non_ascii_bytes_is_422(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], raw_key: bytes
) -> None:
    # Raw bytes in a header: aiohttp's client would re-encode them, so this speaks HTTP itself.
    lead = (await (await http.post(f"{base_url}/forms/contact", json=VALID)).json())["lead"]
    payload = json.dumps({"text": "hi", "author": "olena"}).encode()
    start = (
        f"POST /api/v1/leads/{lead}/replies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {auth['Authorization']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n"
    )
    request = start.encode() + b"Idempotency-Key: " + raw_key + b"\r\n\r\n" + payload
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.web_port)
    try:
        writer.write(request)
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 422 "), response[:500]
    assert json.loads(body)["fields"] == {"Idempotency-Key": "8-128 characters of A-Z a-z 0-9 _ . : -"}
    assert [m.direction.value for m in await hub.store.list_messages(int(lead[2:]))] == ["in"]


# --- authentication ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Basic dGVzdDp0ZXN0"},
        {"Authorization": "Bearer"},
        {"Authorization": "bearer "},
        {"Authorization": "Bearer test-api-token-5f2c-and-more"},
        {"Authorization": "Bearer test-api-token-5f2"},
    ],
)
async def test_api_without_the_right_token_is_401(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, headers: dict[str, str]
) -> None:
    before = await stored(hub)
    for method, path in (
        ("GET", "/api/v1/leads"),
        ("POST", "/api/v1/leads"),
        ("GET", "/api/v1/leads/L-1"),
        ("POST", "/api/v1/leads/L-1/resolve"),
        ("GET", "/api/v1/inbox"),
        ("GET", "/api/v1/nonexistent"),
    ):
        resp = await http.request(method, f"{base_url}{path}", json=VALID, headers=headers)
        await assert_json_error(resp, 401)
        assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer") or not headers
    assert await stored(hub) == before


async def test_api_is_closed_when_no_token_is_configured(
    settings_factory: Any, http: aiohttp.ClientSession
) -> None:
    hub = Hub(settings_factory(api={}))
    await hub.start()
    try:
        resp = await http.get(
            f"http://127.0.0.1:{hub.web_port}/api/v1/leads", headers={"Authorization": "Bearer "}
        )
        await assert_json_error(resp, 401)
    finally:
        await hub.stop()


# --- bad lead numbers, cursors and filters --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/leads/abc",
        "/api/v1/leads/L-",
        "/api/v1/leads/L-0",
        "/api/v1/leads/L--1",
        "/api/v1/leads/L-99999999999999999999",
        "/api/v1/leads/1e9",
        "/api/v1/leads/%00",
        "/api/v1/leads/L-1%0d%0a",
        "/api/v1/leads/L-424242",
        "/api/v1/leads/%C2%B9%C2%B2",
        "/api/v1/leads/999999999999999999999999",
        "/api/v1/leads/%D9%A1%D9%A2",
    ],
)
async def test_bad_or_unknown_lead_numbers_are_404_json(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], path: str
) -> None:
    resp = await http.get(f"{base_url}{path}", headers=auth)
    await assert_json_error(resp, 404)
    for action in ("resolve", "reopen"):
        resp = await http.post(f"{base_url}{path}/{action}", headers=auth)
        await assert_json_error(resp, (404, 422))


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "abc"},
        {"cursor": "-1"},
        {"cursor": "1.5"},
        {"cursor": "99999999999999999999999999"},
        {"cursor": "١٢"},
        {"limit": "0"},
        {"limit": "-5"},
        {"limit": "abc"},
        {"limit": "١٢"},
        {"status": "bogus"},
        {"kind": "bogus"},
        {"breached": "maybe"},
    ],
)
async def test_bad_filters_and_cursors_are_422_json(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], params: dict[str, str]
) -> None:
    resp = await http.get(f"{base_url}/api/v1/leads", params=params, headers=auth)
    await assert_json_error(resp, (400, 422))


async def test_huge_limit_is_capped(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str]
) -> None:
    resp = await http.get(f"{base_url}/api/v1/leads", params={"limit": "9" * 30}, headers=auth)
    assert resp.status == 200


@pytest.mark.parametrize("params", [{"status": "bogus"}, {"status": "done%00"}])
async def test_bad_inbox_filters_are_422(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], params: dict[str, str]
) -> None:
    resp = await http.get(f"{base_url}/api/v1/inbox", params=params, headers=auth)
    await assert_json_error(resp, 422)


@pytest.mark.parametrize("item", ["abc", "-1", "99999999999999999999999", "١٢", "0"])
async def test_bad_inbox_ids_are_4xx(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str], item: str
) -> None:
    resp = await http.post(f"{base_url}/api/v1/inbox/{item}/retry", headers=auth)
    await assert_json_error(resp, (404, 409))


async def test_retry_of_an_unknown_inbox_item_is_404_and_of_a_done_one_409(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, auth: dict[str, str]
) -> None:
    resp = await http.post(f"{base_url}/api/v1/inbox/424242/retry", headers=auth)
    body = await assert_json_error(resp, 404)
    assert body["error"] == "not_found"
    await http.post(f"{base_url}/forms/contact", json=VALID)
    (done,) = await hub.store.inbox_list("done")
    resp = await http.post(f"{base_url}/api/v1/inbox/{done.id}/retry", headers=auth)
    body = await assert_json_error(resp, 409)
    assert body["error"] == "conflict"


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("replies", {"text": {"$gt": ""}, "author": "olena"}),
        ("replies", {"text": "hi", "author": ["olena"]}),
        ("replies", {"text": "", "author": "olena"}),
        ("replies", {"text": "x" * 20_001, "author": "olena"}),
        ("notes", {"text": None, "author": "olena"}),
        ("assign", {"manager": {"$ne": ""}}),
        ("assign", {"manager": "nobody-by-that-name"}),
        ("assign", {"manager": "olena", "by": {"$gt": ""}}),
    ],
)
async def test_bad_action_bodies_are_4xx_json(
    hub: Hub,
    http: aiohttp.ClientSession,
    base_url: str,
    auth: dict[str, str],
    action: str,
    body: dict[str, Any],
) -> None:
    resp = await http.post(f"{base_url}/forms/contact", json=VALID)
    lead = (await resp.json())["lead"]
    before = await (await http.get(f"{base_url}/api/v1/leads/{lead}", headers=auth)).json()
    resp = await http.post(f"{base_url}/api/v1/leads/{lead}/{action}", json=body, headers=auth)
    await assert_json_error(resp, (404, 409, 422))
    after = await (await http.get(f"{base_url}/api/v1/leads/{lead}", headers=auth)).json()
    assert after["messages"] == before["messages"]
    assert after["assignee"] == before["assignee"]


@pytest.mark.parametrize("action", ["replies", "notes", "assign"])
@pytest.mark.parametrize(
    ("data", "ctype", "status"),
    [
        (b"text=hi", "application/x-www-form-urlencoded", 415),
        (b'{"text": "hi", "author": "olena"}', "text/plain", 415),
        (b"[1]", "application/json", 400),
        (b'"a string"', "application/json", 400),
        (b"null", "application/json", 400),
        (b"not json at all", "application/json", 400),
        (b"", "application/json", 400),
        (b'{"text": "\xff", "author": "olena"}', "application/json", 400),
    ],
)
async def test_api_actions_need_a_json_object(
    hub: Hub,
    http: aiohttp.ClientSession,
    base_url: str,
    auth: dict[str, str],
    action: str,
    data: bytes,
    ctype: str,
    status: int,
) -> None:
    resp = await http.post(f"{base_url}/forms/contact", json=VALID)
    lead = (await resp.json())["lead"]
    resp = await http.post(
        f"{base_url}/api/v1/leads/{lead}/{action}", data=data, headers={**auth, "Content-Type": ctype}
    )
    body = await assert_json_error(resp, status)
    assert body["error"] == ("unsupported_media_type" if status == 415 else "bad_request"), body
    messages = await hub.store.list_messages(int(lead[2:]))
    assert [m.direction.value for m in messages] == ["in"]


@pytest.mark.parametrize(
    ("data", "ctype", "status"),
    [
        (b"message=hi&email=a%40example.com", "application/x-www-form-urlencoded", 415),
        (b'{"message": "hi", "email": "a@example.com"}', "text/plain", 415),
        (b"[1]", "application/json", 400),
        (b"null", "application/json", 400),
        (b"not json at all", "application/json", 400),
        (b'{"message": "\xff", "email": "a@example.com"}', "application/json", 400),
    ],
)
async def test_an_api_submission_that_is_not_a_json_object_is_400_or_415_as_documented(
    hub: Hub,
    http: aiohttp.ClientSession,
    base_url: str,
    auth: dict[str, str],
    data: bytes,
    ctype: str,
    status: int,
) -> None:
    # The OpenAPI document says 400 (unreadable body), like every other API call; it was 422.
    before = await stored(hub)
    resp = await http.post(f"{base_url}/api/v1/leads", data=data, headers={**auth, "Content-Type": ctype})
    body = await assert_json_error(resp, status)
    assert body["error"] == ("unsupported_media_type" if status == 415 else "bad_request"), body
    assert await stored(hub) == before
