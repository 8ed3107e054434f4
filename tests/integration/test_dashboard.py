"""The dashboard over loopback HTTP: sign-in, CSRF, roles, reports, CSV, API, erasure, metrics."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import html
import io
import re
import sqlite3
import statistics
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from channels.email.decode import EmailDecoder
from channels.email.parse import parse_email
from hub import i18n
from hub.app import Hub
from hub.attachments import AttachmentStore
from hub.config import Settings
from hub.domain import (
    Event,
    Identity,
    IdentityKind,
    Inbound,
    InboxItem,
    Lead,
    LeadKind,
    LeadStatus,
    Message,
    ThreadHints,
    new_id,
    utcnow,
)
from hub.web.dashboard.auth import login_link, mint_login_token
from hub.web.dashboard.views import BREACHES_PAGE, PAST_BREACHES_PAGE, QUEUE_PAGE
from storage.base import LeadChanges, LeadQuery, StoreError
from tests.contract.builders import contact as build_contact
from tests.contract.builders import email as build_email
from tests.contract.builders import lead as build_lead
from tests.email.helpers import make_mail
from tests.support.dashboard import PASSWORDS, csrf_from, managers_with_passwords, sign_in

KYIV = ZoneInfo("Europe/Kyiv")


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(managers=managers_with_passwords())


@pytest.fixture
async def olena(base_url: str) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    session, csrf = await sign_in(base_url, "olena")
    try:
        yield session, csrf
    finally:
        await session.close()


async def _form_lead(http: aiohttp.ClientSession, base_url: str, form: str = "contact", **fields: str) -> str:
    body = {"name": "Петро Іванченко", "email": "petro@example.com", "message": "Добрий день!", **fields}
    resp = await http.post(f"{base_url}/forms/{form}", json=body)
    assert resp.status == 201, await resp.text()
    ref: str = (await resp.json())["lead"]
    return ref


async def test_sign_in_sets_a_signed_httponly_lax_cookie_and_wrong_password_fails(base_url: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        page = await session.get(f"{base_url}/dashboard", allow_redirects=True)
        assert "/dashboard/login" in str(page.url)
        csrf = csrf_from(await page.text())
        bad = await session.post(
            f"{base_url}/dashboard/login", data={"csrf": csrf, "username": "olena", "password": "nope"}
        )
        assert bad.status == 401
        good = await session.post(
            f"{base_url}/dashboard/login",
            data={"csrf": csrf, "username": "olena", "password": PASSWORDS["olena"], "next": "/dashboard"},
            allow_redirects=False,
        )
        assert good.status == 303
        cookie = good.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        queue = await session.get(f"{base_url}/dashboard")
        assert queue.status == 200 and "Олена Коваль" in await queue.text()
        assert "script-src 'self'" in queue.headers["Content-Security-Policy"]


async def test_tampered_session_cookie_is_not_accepted(base_url: str, olena) -> None:
    session, _ = olena
    cookie = next(c for c in session.cookie_jar if c.key == "hub_session")
    payload, _, mac = cookie.value.partition(".")
    forged = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    try:
        forged.cookie_jar.update_cookies(
            {"hub_session": payload + "." + mac[::-1]}, response_url=session_url(base_url)
        )
        resp = await forged.get(f"{base_url}/dashboard", allow_redirects=False)
        assert resp.status == 303 and "/dashboard/login" in resp.headers["Location"]
    finally:
        await forged.close()


def session_url(base_url: str) -> Any:
    from yarl import URL

    return URL(base_url)


async def test_post_without_or_with_a_wrong_csrf_token_is_refused(
    hub: Hub, http, base_url: str, olena
) -> None:
    session, csrf = olena
    ref = await _form_lead(http, base_url)
    missing = await session.post(f"{base_url}/dashboard/leads/{ref}/note", data={"text": "x"})
    assert missing.status == 403
    wrong = await session.post(
        f"{base_url}/dashboard/leads/{ref}/note", data={"text": "x", "csrf": csrf + "x"}
    )
    assert wrong.status == 403
    header = await session.post(
        f"{base_url}/dashboard/leads/{ref}/note", data={"text": "ok"}, headers={"X-CSRF-Token": csrf}
    )
    assert header.status == 200
    notes = [m for m in await hub.store.list_messages(1) if m.direction.value == "note"]
    assert [n.text for n in notes] == ["ok"]


async def test_agent_sees_own_and_unassigned_leads_only(hub: Hub, http, base_url: str) -> None:
    ref = await _form_lead(http, base_url, form="service")  # routed to the service team
    lead = await hub.store.get_lead(int(ref[2:]))
    assert lead is not None and lead.assignee in {"iryna", "andrii"}
    await hub.actions.assign(lead.number, "andrii", by="test")
    taras, _ = await sign_in(base_url, "taras")
    iryna, _ = await sign_in(base_url, "iryna")
    try:
        assert (await taras.get(f"{base_url}/dashboard/leads/{ref}")).status == 403
        assert (await iryna.get(f"{base_url}/dashboard/leads/{ref}")).status == 403
        await hub.actions.assign(lead.number, "iryna", by="test")
        assert (await iryna.get(f"{base_url}/dashboard/leads/{ref}")).status == 200
        assert ref not in await (await taras.get(f"{base_url}/dashboard/queue/rows")).text()
        assert ref in await (await iryna.get(f"{base_url}/dashboard/queue/rows")).text()
        for page in ("reports", "breaches", "team"):
            assert (await taras.get(f"{base_url}/dashboard/{page}")).status == 403
    finally:
        await taras.close()
        await iryna.close()


async def test_login_is_rate_limited(base_url: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        csrf = csrf_from(await (await session.get(f"{base_url}/dashboard/login")).text())
        statuses = []
        for _ in range(7):
            resp = await session.post(
                f"{base_url}/dashboard/login", data={"csrf": csrf, "username": "taras", "password": "guess"}
            )
            statuses.append(resp.status)
        assert statuses[:5] == [401] * 5
        assert statuses[5:] == [429, 429]


async def test_one_time_login_link_works_once(hub: Hub, base_url: str) -> None:
    token = mint_login_token(hub.settings, "taras", datetime.now(KYIV))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        first = await session.get(f"{base_url}/dashboard/link/{token}")
        assert first.status == 200 and "Тарас Бондар" in await first.text()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        again = await session.get(f"{base_url}/dashboard/link/{token}")
        assert again.status == 401
        forged = await session.get(f"{base_url}/dashboard/link/{token[:-3]}abc")
        assert forged.status == 401
    url = login_link(hub.settings, "olena", datetime.now(KYIV))
    path = url[url.index("/dashboard/link/") :]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        assert "Олена Коваль" in await (await session.get(f"{base_url}{path}")).text()


async def test_lead_page_shows_sanitized_html_and_actions_work(hub: Hub, http, base_url: str, olena) -> None:
    session, csrf = olena
    ref = await _form_lead(http, base_url)
    number = int(ref[2:])
    # A channel that carries HTML (email) hands the core sanitized-or-not HTML; the page must clean it.
    inbound = Inbound(
        channel="email",
        external_id="mail-1",
        sender=Identity(IdentityKind.EMAIL, "petro@example.com", "Петро"),
        text="see html",
        html='<p onclick="x()">Hi <script>alert(1)</script><b>there</b><img src="http://evil/x.png"></p>',
        received_at=datetime.now(KYIV),
        thread=__import__("hub.domain", fromlist=["ThreadHints"]).ThreadHints(lead_number=number),
    )
    await hub.intake.accept(inbound)
    page = await (await session.get(f"{base_url}/dashboard/leads/{ref}")).text()
    assert "<b>there</b>" in page
    assert "<script>alert" not in page and "onclick" not in page and "evil" not in page
    for action, data in (
        ("reply", {"text": "Відповідаємо"}),
        ("note", {"text": "внутрішнє"}),
        ("assign", {"manager": "taras"}),
        ("resolve", {}),
        ("reopen", {}),
    ):
        resp = await session.post(f"{base_url}/dashboard/leads/{ref}/{action}", data={"csrf": csrf, **data})
        assert resp.status == 200 and f"done={action}" in str(resp.url), (action, resp.url)
    lead = await hub.store.get_lead(number)
    assert lead is not None and lead.assignee == "taras" and lead.first_response_at is not None
    messages = await hub.store.list_messages(number)
    assert [m.direction.value for m in messages][-2:] == ["out", "note"]
    page = await (await session.get(f"{base_url}/dashboard/leads/{ref}")).text()
    assert "Відповідаємо" in page and "призначено вручну" in page  # the history shows the reason


async def test_a_note_over_the_limit_is_refused_not_cut(hub: Hub, http, base_url: str, olena) -> None:
    session, csrf = olena
    ref = await _form_lead(http, base_url)
    resp = await session.post(
        f"{base_url}/dashboard/leads/{ref}/note", data={"csrf": csrf, "text": "x" * 20_001}
    )
    assert "error=too_long" in str(resp.url), resp.url
    assert [m for m in await hub.store.list_messages(int(ref[2:])) if m.direction.value == "note"] == []
    kept = await session.post(
        f"{base_url}/dashboard/leads/{ref}/note", data={"csrf": csrf, "text": "y" * 20_000}
    )
    assert "done=note" in str(kept.url), kept.url
    notes = [m for m in await hub.store.list_messages(int(ref[2:])) if m.direction.value == "note"]
    assert [len(m.text) for m in notes] == [20_000]


async def test_erase_contact_leaves_no_personal_data(hub: Hub, http, base_url: str, olena, settings) -> None:
    session, csrf = olena
    ref = await _form_lead(http, base_url, name="Секретна Особа", email="secret.person@example.com")
    await hub.replies.record_reply(int(ref[2:]), "Відповідь для секретної особи", "Олена")
    refused = await session.post(f"{base_url}/dashboard/leads/{ref}/erase", data={"csrf": csrf})
    assert "error=confirm" in str(refused.url)
    resp = await session.post(
        f"{base_url}/dashboard/leads/{ref}/erase", data={"csrf": csrf, "confirm": "yes"}
    )
    assert resp.status == 200 and "done=erased" in str(resp.url)
    db_path = settings.storage.url.removeprefix("sqlite:///")
    with sqlite3.connect(db_path) as db:
        dump = "\n".join(db.iterdump())
        outbox_rows = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        erased = db.execute("SELECT data FROM events WHERE type = 'contact.erased'").fetchall()
    for secret in ("secret.person", "Секретна", "секретної"):
        assert secret not in dump
    assert outbox_rows == 0
    assert len(erased) == 1 and "olena" in erased[0][0]
    assert (await session.get(f"{base_url}/dashboard/leads/{ref}")).status == 200


async def test_merge_and_reply_on_a_lead_whose_contact_was_erased_are_refused(
    hub: Hub, http, base_url: str, olena
) -> None:
    session, csrf = olena
    a = await _form_lead(http, base_url, name="Erased Person", email="erased@example.com")
    b = await _form_lead(http, base_url, name="Other Customer", email="other@example.com")
    lead_b = await hub.store.get_lead(int(b[2:]))
    assert lead_b is not None
    erased = await session.post(
        f"{base_url}/dashboard/leads/{a}/erase", data={"csrf": csrf, "confirm": "yes"}
    )
    assert "done=erased" in str(erased.url)
    for other in (b, a):  # the erased lead on either side of the merge
        page, target = (a, b) if other == b else (b, a)
        resp = await session.post(
            f"{base_url}/dashboard/leads/{page}/merge", data={"csrf": csrf, "other": target}
        )
        assert "error=merge_erased" in str(resp.url), resp.url
        text = await resp.text()
        assert "Контакти не можна об" in text and 'class="notice"' not in text
    kept = await hub.store.get_contact(lead_b.contact_id)
    assert kept is not None and kept.name == "Other Customer" and kept.identities
    assert (await hub.store.get_lead(lead_b.number)).contact_id == lead_b.contact_id  # type: ignore[union-attr]
    assert await hub.store.list_events(types=["contact.merged"]) == []

    reply = await session.post(
        f"{base_url}/dashboard/leads/{a}/reply", data={"csrf": csrf, "text": "Відповідь"}
    )
    assert "error=reply_erased" in str(reply.url), reply.url
    assert "Відповідь не можна надіслати" in await reply.text()
    assert await hub.store.list_messages(int(a[2:])) == []


def _shown(text: str) -> list[int]:
    return [int(ref) for ref in re.findall(r'data-lead="L-(\d+)"', text)]


def _page_link(text: str, rel: str) -> str | None:
    found = re.search(rf'<a href="([^"]+)" rel="{rel}"', text)
    return html.unescape(found.group(1)) if found else None


async def test_the_queue_pages_through_every_lead_in_due_order_keeping_filters_and_language(
    hub: Hub, base_url: str, olena
) -> None:
    session, _ = olena
    now = utcnow()
    total = 2 * QUEUE_PAGE + 10
    async with hub.store.deferred_commit():
        # The oldest leads are the most overdue: a newest-first cut would drop exactly them.
        for number in range(1, total + 1):
            await hub.store.create_lead(
                build_lead(
                    number,
                    "c-queue",
                    team="support" if number % 2 else "service",
                    first_response_due=now + timedelta(minutes=number - 20),
                )
            )
    support = [n for n in range(1, total + 1) if n % 2]
    pages: list[list[int]] = []
    url: str | None = f"{base_url}/dashboard?team=support&lang=en"
    while url is not None:
        resp = await session.get(url)
        assert resp.status == 200, url
        text = await resp.text()
        pages.append(_shown(text))
        assert f"Page {len(pages)}: {len(pages[-1])} of {len(support)}" in text
        assert "selected>support</option>" in text  # the filter is still applied
        # The live refresh re-reads this same page.
        rows_url = html.unescape(re.search(r'data-rows-url="([^"]+)"', text).group(1))  # type: ignore[union-attr]
        assert _shown(await (await session.get(f"{base_url}{rows_url}")).text()) == pages[-1]
        link = _page_link(text, "next")
        if link is not None:
            assert "team=support" in link and "lang=en" in link, link
        url = f"{base_url}{link}" if link else None
    assert [n for page in pages for n in page] == support
    assert [len(page) for page in pages] == [QUEUE_PAGE, len(support) - QUEUE_PAGE]
    # And back: "previous" on the last page is the first page again.
    prev = _page_link(text, "prev")
    assert prev is not None and "lang=en" in prev and "team=support" in prev
    first = await (await session.get(f"{base_url}{prev}")).text()
    assert _shown(first) == pages[0]
    assert _page_link(first, "prev") is None and "Page 1:" in first


async def test_a_bad_page_link_shows_the_first_page_never_an_error(hub: Hub, base_url: str, olena) -> None:
    session, _ = olena
    now = utcnow()
    async with hub.store.deferred_commit():
        for number in range(1, QUEUE_PAGE + 3):
            await hub.store.create_lead(
                build_lead(number, "c-bad", first_response_due=now + timedelta(minutes=number))
            )
    first = list(range(1, QUEUE_PAGE + 1))
    for page in ("x", "ao_1", "aonan_1", "b", "9" * 300, "ao1e999_1", "a\u0000", "%ff", "bo1_" + "9" * 30):
        for path in ("/dashboard", "/dashboard/queue/rows"):
            resp = await session.get(f"{base_url}{path}", params={"page": page, "page_n": "7", "lang": "en"})
            assert resp.status == 200, (path, page)
            text = await resp.text()
            assert _shown(text) == first, (path, page)
            if path == "/dashboard":
                assert "That page link does not work any more" in text
    for number in ("-1", "0", "x", "99999999999"):
        cursor = (await hub.store.list_leads(_queue_query(), QUEUE_PAGE)).next_cursor
        resp = await session.get(f"{base_url}/dashboard", params={"page": cursor or "", "page_n": number})
        assert resp.status == 200 and _shown(await resp.text()) == [QUEUE_PAGE + 1, QUEUE_PAGE + 2]
    resp = await session.get(
        f"{base_url}/dashboard/breaches", params={"page": "zz", "past": "b-1", "lang": "en"}
    )
    assert resp.status == 200 and "That page link does not work any more" in await resp.text()


def _queue_query() -> LeadQuery:
    return LeadQuery(statuses=(LeadStatus.NEW, LeadStatus.OPEN, LeadStatus.WAITING_CUSTOMER), order="due")


async def test_an_agents_queue_pages_through_own_and_unassigned_leads(hub: Hub, base_url: str) -> None:
    now = utcnow()
    async with hub.store.deferred_commit():
        for number in range(1, 2 * QUEUE_PAGE + 1):
            owner = ("taras", None, "olena")[number % 3]
            await hub.store.create_lead(
                build_lead(
                    number, "c-agent", assignee=owner, first_response_due=now + timedelta(minutes=number)
                )
            )
    mine = [n for n in range(1, 2 * QUEUE_PAGE + 1) if n % 3 != 2]
    session, _ = await sign_in(base_url, "taras")
    try:
        text = await (await session.get(f"{base_url}/dashboard", params={"lang": "en"})).text()
        link = _page_link(text, "next")
        assert link is not None
        second = await (await session.get(f"{base_url}{link}")).text()
        assert _shown(text) + _shown(second) == mine
        assert f"of {len(mine)}" in second
    finally:
        await session.close()


async def test_a_queue_of_every_status_puts_resolved_unanswered_leads_after_the_owed_ones(
    hub: Hub, base_url: str, olena
) -> None:
    session, _ = olena
    now = utcnow()
    async with hub.store.deferred_commit():
        await hub.store.create_lead(
            build_lead(1, "c-all", status=LeadStatus.RESOLVED, first_response_due=now - timedelta(days=3))
        )
        await hub.store.create_lead(build_lead(2, "c-all", first_response_due=now + timedelta(hours=1)))
    for path in ("/dashboard", "/dashboard/queue/rows"):
        text = await (await session.get(f"{base_url}{path}", params={"lang": "en", "status": "all"})).text()
        shown = [int(ref) for ref in re.findall(r'data-lead="L-(\d+)"', text)]
        assert shown == [2, 1], (path, shown)
        resolved_row = text[text.index('data-lead="L-1"') :]
        resolved_row = resolved_row[: resolved_row.index("</tr>")]
        assert "not answered" in resolved_row and "answered</span>" not in resolved_row.replace(
            "not answered", ""
        )
        assert "data-due" not in resolved_row


async def test_breaches_page_counts_every_breach_and_pages_the_most_overdue_first(
    hub: Hub, base_url: str, olena
) -> None:
    session, _ = olena
    now = utcnow()
    total = BREACHES_PAGE + 5
    async with hub.store.deferred_commit():
        for number in range(1, total + 1):
            due = now - timedelta(hours=total - number + 1)  # L-1 is the most overdue
            await hub.store.create_lead(
                build_lead(number, "c-late", first_response_due=due, breached_at=due, status=LeadStatus.OPEN)
            )
        for number in range(total + 1, total + PAST_BREACHES_PAGE + 3):
            due = now - timedelta(days=3)
            await hub.store.create_lead(
                build_lead(
                    number, "c-late", first_response_due=due, breached_at=due, status=LeadStatus.CLOSED
                )
            )

    def current_of(text: str) -> tuple[list[int], str]:
        part = text[text.index('id="breaches-current"') : text.index('id="breaches-past"')]
        return [int(ref) for ref in re.findall(r'href="/dashboard/leads/L-(\d+)[?"]', part)], part

    text = await (await session.get(f"{base_url}/dashboard/breaches", params={"lang": "en"})).text()
    shown, part = current_of(text)
    assert shown == list(range(1, BREACHES_PAGE + 1)), (shown[:5], shown[-5:])
    assert f"Current (still open) ({total})" in part and f"Page 1: {BREACHES_PAGE} of {total}" in part
    link = _page_link(part, "next")
    assert link is not None and "lang=en" in link
    # The past table's next page keeps the current table's page, and the other way round.
    second = await (await session.get(f"{base_url}{link}")).text()
    assert current_of(second)[0] == list(range(BREACHES_PAGE + 1, total + 1))
    past_part = second[second.index('id="breaches-past"') :]
    past_link = _page_link(past_part, "next")
    assert past_link is not None and "page=" in past_link
    third = await (await session.get(f"{base_url}{past_link}")).text()
    assert current_of(third)[0] == list(range(BREACHES_PAGE + 1, total + 1))
    past_shown = [
        int(ref)
        for ref in re.findall(
            r'href="/dashboard/leads/L-(\d+)[?"]', third[third.index('id="breaches-past"') :]
        )
    ]
    assert past_shown == [total + 2, total + 1]  # newest first: the two oldest past ones


async def test_a_breach_resolved_unanswered_is_as_late_as_it_was_when_resolved(
    hub: Hub, base_url: str, olena
) -> None:
    session, _ = olena
    now = utcnow()
    due = now - timedelta(hours=3)
    await hub.store.create_lead(
        build_lead(
            1,
            "c-gone",
            first_response_due=due,
            breached_at=due,
            status=LeadStatus.RESOLVED,
            resolved_at=due + timedelta(hours=2),
        )
    )
    text = await (await session.get(f"{base_url}/dashboard/breaches", params={"lang": "en"})).text()
    past = text[text.index("Past") :]
    assert "2h 00m" in past and "3h 00m" not in past, past[:2000]


async def test_the_queue_finds_a_customer_by_the_phone_number_as_typed(http, base_url: str, olena) -> None:
    session, _ = olena
    ref = await _form_lead(http, base_url, email="", phone="+380 67 111 22 33")
    for typed in ("0671112233", "380671112233", "+380671112233", ref):
        text = await (await session.get(f"{base_url}/dashboard", params={"q": typed})).text()
        assert f'data-lead="{ref}"' in text, typed


async def test_live_queue_rows_keep_the_language_chosen_with_lang(http, base_url: str, olena) -> None:
    session, _ = olena
    await _form_lead(http, base_url)
    page = await session.get(
        f"{base_url}/dashboard", params={"lang": "en"}, headers={"Accept-Language": "uk"}
    )
    match = re.search(r'data-rows-url="([^"]+)"', await page.text())
    assert match is not None
    rows_url = match.group(1).replace("&amp;", "&")
    rows = await session.get(f"{base_url}{rows_url}", headers={"Accept-Language": "uk"})
    text = await rows.text()
    assert "message" in text and "повідомлення" not in text, text


async def test_action_errors_and_notices_are_localized_codes_never_text_from_the_url(
    http, base_url: str, olena
) -> None:
    session, csrf = olena
    ref = await _form_lead(http, base_url)
    lead_url = f"{base_url}/dashboard/leads/{ref}"

    async def act(action: str, **data: str) -> str:
        resp = await session.post(f"{lead_url}/{action}", data={"csrf": csrf, **data})
        assert resp.status == 200
        return f"{resp.url.query.get('error')}|{await resp.text()}"

    assert (await act("resolve")).startswith("None|")
    for (action, data), code, text in (
        (("reply", {"text": "  "}), "empty_text", "Спершу напишіть текст."),
        (("note", {"text": ""}), "empty_text", "Спершу напишіть текст."),
        (("assign", {"manager": ""}), "no_manager", "Такого менеджера немає."),
        (("resolve", {}), "already_resolved", "Це звернення вже вирішене."),
        (("merge", {"other": "garbage"}), "no_other_lead", "Звернення з таким номером немає."),
        (("merge", {"other": ref}), "same_contact", "Це звернення вже належить цьому контакту."),
    ):
        result = await act(action, **data)
        assert result.startswith(f"{code}|") and text in result, (action, result[:200])
        assert "is already" not in result and "unknown manager" not in result

    phishing = "Your session expired. Sign in again at https://evil.example/login"
    page = await (await session.get(lead_url, params={"error": phishing, "done": "foo"})).text()
    assert "Your session expired" not in page and 'role="alert"' not in page
    assert "dash.done" not in page and 'class="notice"' not in page

    erased = await session.post(f"{lead_url}/erase", data={"csrf": csrf, "confirm": "yes"})
    assert (
        erased.url.path == "/dashboard"
        and 'class="notice" role="status">Контакт стерто.' in await erased.text()
    )


async def test_the_lead_page_names_events_channels_identities_and_routing_in_the_ui_language(
    http, base_url: str, olena
) -> None:
    session, _ = olena
    ref = await _form_lead(http, base_url)
    page = await (await session.get(f"{base_url}/dashboard/leads/{ref}")).text()
    audit = page[page.index('class="history small"') :]
    assert "створено" in audit and "lead.created" not in audit
    assert "<dd>вебформа</dd>" in page and "· webform ·" not in page
    assert '<span class="muted">ел. пошта:</span>' in page
    history = page[page.index('id="assign-h"') : page.index('id="contact-h"')]
    summary = history[: history.index("<details")]
    assert "автоматичний розподіл" in summary and "strategy" not in summary


async def test_a_lead_that_follows_up_a_long_resolved_one_links_it(hub: Hub, base_url: str, olena) -> None:
    session, _ = olena
    now = utcnow()

    def mail(key: str, at: datetime, **kw: Any) -> Inbound:
        sender = Identity(IdentityKind.EMAIL, "marta@example.com", "Marta")
        return Inbound(channel="email", external_id=key, sender=sender, text=key, received_at=at, **kw)

    long_ago = now - timedelta(days=40)
    old = await hub.intake.accept(mail("old", long_ago, own_refs=("<old@x>",)), now=long_ago)
    await hub.actions.resolve(old.lead.number, by="olena", now=now - timedelta(days=30))
    new = await hub.intake.accept(mail("new", now, thread=ThreadHints(message_ids=("<old@x>",))), now=now)
    assert new.created_lead
    page = await (await session.get(f"{base_url}/dashboard/leads/{new.lead.ref}?lang=en")).text()
    audit = page[page.index('class="history small"') :]
    assert "continues a lead resolved long ago:" in audit
    assert f'href="/dashboard/leads/{old.lead.ref}?lang=en">{old.lead.ref}</a>' in audit


# --- reports --------------------------------------------------------------------------------


T0 = datetime(2026, 3, 2, 9, 0, tzinfo=KYIV)
H = timedelta(hours=1)
M = timedelta(minutes=1)


async def _lead_at(hub: Hub, key: str, at: datetime, kind: LeadKind = LeadKind.MESSAGE) -> int:
    inbound = Inbound(
        channel="webform",
        external_id=f"report-{key}",
        sender=Identity(IdentityKind.EMAIL, f"{key}@example.com", key),
        text=f"lead {key}",
        received_at=at,
        kind_hint=kind,
        form_id="contact",
    )
    result = await hub.intake.accept(inbound, now=at)
    return result.lead.number


async def _build_history(hub: Hub) -> dict[str, Any]:
    """Leads with known response times; returns what a report must say about them."""
    replies = {  # key: (created, kind, reply delay or None)
        "a": (T0, LeadKind.MESSAGE, 10 * M),
        "b": (T0 + H, LeadKind.MESSAGE, 30 * M),
        "c": (T0 + 2 * H, LeadKind.MESSAGE, H),
        "d": (T0 + 3 * H, LeadKind.MESSAGE, 2 * H),
        "e": (T0 + 4 * H, LeadKind.MESSAGE, 3 * H + 30 * M),
        "g": (T0 + 6 * H, LeadKind.MESSAGE, None),  # breached, never answered
        "h": (T0 + 7 * H, LeadKind.SERVICE_REQUEST, 11 * H),  # 12 h target: in time
        "i": (T0 + timedelta(days=1), LeadKind.MESSAGE, 20 * M),
        "k": (T0 + timedelta(days=2, hours=23), LeadKind.MESSAGE, None),  # not due yet at the end
    }
    numbers = {key: await _lead_at(hub, key, at, kind) for key, (at, kind, _) in replies.items()}
    numbers["f"] = await _lead_at(hub, "f", T0 + 5 * H)  # answered late, after its breach was marked
    numbers["old"] = await _lead_at(hub, "old", datetime(2026, 2, 25, 10, 0, tzinfo=KYIV))
    for key, (at, _, delay) in replies.items():
        if delay is not None:
            await hub.replies.record_reply(numbers[key], "ok", "test", now=at + delay)
    await hub.sweeper.sweep(T0 + 9 * H + M)  # f is due at T0+9h and still unanswered
    await hub.replies.record_reply(numbers["f"], "sorry", "test", now=T0 + 10 * H)
    await hub.actions.resolve(numbers["i"], by="test", now=T0 + timedelta(days=1, hours=2))
    await hub.sweeper.sweep(T0 + timedelta(days=3))  # g breaches; k (due later) does not
    frts = [
        (delay or timedelta(0)).total_seconds() for (_, _, delay) in replies.values() if delay is not None
    ] + [5 * 3600.0]
    return {"numbers": numbers, "frts": frts}


async def test_kpi_report_figures_equal_what_the_leads_say(
    hub: Hub, http, base_url: str, auth, olena
) -> None:
    history = await _build_history(hub)
    frts = history["frts"]
    resp = await http.get(
        f"{base_url}/api/v1/reports/kpi",
        params={
            "from": "2026-03-02",
            "to": "2026-03-05",
            "compare_from": "2026-02-23",
            "compare_to": "2026-03-01",
        },
        headers=auth,
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    summary = body["summary"]
    assert summary["received"] == 10
    assert summary["responded"] == 8 == len(frts)
    assert summary["within_target"] == 7
    assert summary["breached"] == 2
    assert summary["resolved"] == 1
    assert summary["first_response_mean_s"] == pytest.approx(statistics.mean(frts))
    assert summary["first_response_median_s"] == pytest.approx(statistics.median(frts))
    p90 = statistics.quantiles(frts, n=10, method="inclusive")[8]
    assert summary["first_response_p90_s"] == pytest.approx(p90)
    assert summary["resolution_mean_s"] == pytest.approx(2 * 3600)
    assert summary["within_target_pct"] == pytest.approx(70.0)
    assert summary["sla_compliance_pct"] == pytest.approx(round(100 * 7 / 9, 3))
    by_kind = {row["key"]: row["received"] for row in body["by"]["kind"]}
    assert by_kind == {"message": 9, "service_request": 1}
    assert sum(row["received"] for row in body["by"]["assignee"]) == 10
    assert {row["key"] for row in body["by"]["team"]} == {"support", "service"}
    assert sum(row["received"] for row in body["daily"]) == 10
    compare = body["compare"]
    assert compare["summary"]["received"] == 1 and compare["summary"]["breached"] == 1
    change = {row["figure"]: row["change_pct"] for row in compare["change"]}
    assert change["received"] == pytest.approx(900.0)

    filtered = await (
        await http.get(
            f"{base_url}/api/v1/reports/kpi",
            params={"from": "2026-03-02", "to": "2026-03-05", "kind": "service_request"},
            headers=auth,
        )
    ).json()
    assert filtered["summary"]["received"] == 1
    assert filtered["summary"]["first_response_median_s"] == pytest.approx(11 * 3600)

    session, _ = olena
    csv_resp = await session.get(
        f"{base_url}/dashboard/reports/csv",
        params={"from": "2026-03-02", "to": "2026-03-05", "table": "kind", "sep": "comma"},
    )
    assert csv_resp.status == 200 and csv_resp.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO((await csv_resp.read()).decode("utf-8-sig"))))
    assert {r["kind"]: int(r["received"]) for r in rows} == by_kind
    for table in ("summary", "daily", "team", "assignee", "channel", "compare"):
        resp = await session.get(f"{base_url}/dashboard/reports/csv", params={"table": table})
        assert resp.status == 200, table
    page = await session.get(
        f"{base_url}/dashboard/reports", params={"from": "2026-03-02", "to": "2026-03-05"}
    )
    assert page.status == 200
    assert 'data-figure="received" data-value="10"' in await page.text()


async def test_large_period_report_says_its_percentiles_are_approximate_and_keeps_the_bound(
    hub: Hub, http, base_url: str, auth, olena, monkeypatch
) -> None:
    if hub.store.backend != "sqlite":
        pytest.skip("the histogram rollups are SQLite's")
    import storage.sqlite as sqlite_module

    # Every period counts as large: the figures come from the rollups the lead writes kept.
    monkeypatch.setattr(sqlite_module, "_KPI_SORT_LIMIT", 0)
    frts = (await _build_history(hub))["frts"]
    resp = await http.get(
        f"{base_url}/api/v1/reports/kpi", params={"from": "2026-03-02", "to": "2026-03-05"}, headers=auth
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["percentiles"]["approximate"] is True
    bound = body["percentiles"]["max_relative_error"]
    assert bound == pytest.approx(0.025)
    summary = body["summary"]
    assert (summary["received"], summary["responded"], summary["within_target"]) == (10, 8, 7)
    assert (summary["breached"], summary["resolved"]) == (2, 1)
    assert summary["first_response_mean_s"] == pytest.approx(statistics.mean(frts))
    for name, exact in (
        ("first_response_median_s", statistics.median(frts)),
        ("first_response_p90_s", statistics.quantiles(frts, n=10, method="inclusive")[8]),
        ("resolution_median_s", 2 * 3600),
    ):
        assert abs(summary[name] - exact) <= bound * exact + 0.5, name
    assert {row["key"]: row["received"] for row in body["by"]["kind"]} == {"message": 9, "service_request": 1}
    assert sum(row["received"] for row in body["daily"]) == 10
    session, _ = olena
    page = await session.get(
        f"{base_url}/dashboard/reports", params={"from": "2026-03-02", "to": "2026-03-05"}
    )
    assert page.status == 200
    assert 'id="percentiles-approximate"' in await page.text()


async def test_bad_report_parameters_get_a_localized_html_page_on_the_report_and_its_csv(
    base_url: str, olena
) -> None:
    session, _ = olena
    for path in ("/dashboard/reports", "/dashboard/reports/csv"):
        for params, text in (
            ({"from": "2026-12-05", "to": "2026-12-01"}, "Період має закінчуватися після початку."),
            (
                {"from": "garbage"},
                "«З»: потрібна дата (2026-11-01) або мітка часу ISO, від 0001-01-03 до 9999-12-29.",
            ),
            ({"kind": "nonsense"}, "Такого типу звернень немає."),
        ):
            resp = await session.get(f"{base_url}{path}", params={**params, "table": "summary"})
            body = await resp.text()
            assert resp.status == 422 and resp.content_type == "text/html", (path, params, body[:200])
            assert text in body and "{" not in body.split("<main", 1)[1], (path, params)


async def test_kpi_api_needs_the_token_and_validates_dates(http, base_url: str, auth) -> None:
    assert (await http.get(f"{base_url}/api/v1/reports/kpi")).status == 401
    bad = await http.get(f"{base_url}/api/v1/reports/kpi", params={"from": "yesterday"}, headers=auth)
    assert bad.status == 422
    backwards = await http.get(
        f"{base_url}/api/v1/reports/kpi", params={"from": "2026-03-05", "to": "2026-03-01"}, headers=auth
    )
    assert backwards.status == 422


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"to": "9999-12-31"}, "to"),
        ({"from": "9999-12-01", "to": "9999-12-31T23:59:59-14:00"}, "to"),
        ({"from": "0001-01-01", "to": "0001-01-05", "compare": "previous"}, "from"),
        ({"from": "0001-01-01T00:00:00+14:00", "to": "0001-01-02"}, "from"),
        ({"from": "0001-01-05", "to": "0001-01-09", "compare": "previous"}, "compare"),
        ({"compare_from": "0001-01-01", "compare_to": "0001-01-02"}, "compare_from"),
    ],
)
async def test_report_dates_out_of_range_are_422_naming_the_field(
    http, base_url: str, auth, olena, params: dict[str, str], field: str
) -> None:
    resp = await http.get(f"{base_url}/api/v1/reports/kpi", params=params, headers=auth)
    assert resp.status == 422, await resp.text()
    body = await resp.json()
    assert body["error"] == "validation_failed" and field in body["fields"], body
    session, _ = olena
    page = await session.get(
        f"{base_url}/dashboard/reports", params=params, headers={"Accept-Language": "en"}
    )
    text = html.unescape(await page.text())
    assert page.status == 422, text
    if field == "compare":
        assert i18n.text("dash.reports.error.no_previous", "en") in text
    else:
        assert (
            i18n.text(
                "dash.reports.error.bad_date", "en", field=i18n.text(f"dash.reports.param.{field}", "en")
            )
            in text
        )


async def test_report_dates_near_the_ends_of_the_calendar_still_work(
    http, base_url: str, auth, olena
) -> None:
    # The limits the error message states are themselves accepted (local days, not UTC instants).
    for params in ({"from": "0001-01-03", "to": "0001-01-09"}, {"from": "9999-12-01", "to": "9999-12-29"}):
        resp = await http.get(f"{base_url}/api/v1/reports/kpi", params=params, headers=auth)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["summary"]["received"] == 0
    session, _ = olena
    early = {"from": "0001-01-03", "to": "0001-01-09"}
    page = await session.get(f"{base_url}/dashboard/reports", params=early)
    assert page.status == 200, await page.text()
    # No earlier period to compare with: the CSV export answers with the page's localized error.
    csv_resp = await session.get(
        f"{base_url}/dashboard/reports/csv",
        params={**early, "table": "compare"},
        headers={"Accept-Language": "en"},
    )
    assert (csv_resp.status, csv_resp.content_type) == (422, "text/html"), await csv_resp.text()
    assert i18n.text("dash.reports.error.no_previous", "en") in html.unescape(await csv_resp.text())


async def test_metrics_in_prometheus_format(hub: Hub, http, base_url: str) -> None:
    ref = await _form_lead(http, base_url)
    await hub.replies.record_reply(int(ref[2:]), "hi", "test")
    hub.channel_states.report("email", False, "IMAP login failed")
    resp = await http.get(f"{base_url}/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert 'hub_leads_created_total{channel="webform",kind="message"} 1.0' in text
    assert 'hub_first_response_seconds_count{kind="message"} 1.0' in text
    assert 'hub_leads_open{team="support"} 1.0' in text
    assert 'hub_outbox_rows{state="queued"}' in text or 'hub_outbox_rows{state="failed"}' in text
    assert 'hub_channel_connected{channel="email"} 0.0' in text
    assert "hub_store_up 1.0" in text


async def test_metrics_count_every_kind_of_sla_mark(hub: Hub, http, base_url: str) -> None:
    ref = await _form_lead(http, base_url)
    lead = await hub.store.get_lead(int(ref[2:]))
    # Escalations (team_lead_after) went uncounted: an alert on them never fired.
    for event_type in ("sla.warning", "sla.breached", "sla.escalated"):
        await hub.bus.publish(Event(event_type, utcnow(), lead.number if lead else None, {}), lead)
    text = await (await http.get(f"{base_url}/metrics")).text()
    for event_type in ("sla.warning", "sla.breached", "sla.escalated"):
        assert f'hub_sla_events_total{{type="{event_type}"}} 1.0' in text, text


async def test_metrics_answer_with_store_up_0_while_the_store_is_down(
    hub: Hub, http, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*_: object) -> Any:
        raise StoreError("MongoDB: no server answered within 30 s")

    async def no_pong() -> bool:
        return False

    # What a store whose server is gone does: its ping says no and its reads raise.
    for read in ("active_counts", "outbox_counts"):
        monkeypatch.setattr(hub.store, read, down)
    monkeypatch.setattr(hub.store, "ping", no_pong)
    resp = await http.get(f"{base_url}/metrics")
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    assert "hub_store_up 0.0" in text
    assert "hub_leads_open{" not in text  # nothing made up while the store cannot be read
    # A store that answers the ping but fails a read is down for the scrape too.
    monkeypatch.setattr(hub.store, "ping", lambda: asyncio.sleep(0, True))
    resp = await http.get(f"{base_url}/metrics")
    assert resp.status == 200 and "hub_store_up 0.0" in await resp.text()


async def test_hash_password_cli_prints_a_verifiable_hash(monkeypatch, capsys) -> None:
    from argon2 import PasswordHasher

    from hub.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("long enough secret\n"))
    assert main(["hash-password", "--stdin"]) == 0
    printed = capsys.readouterr().out.strip()
    assert PasswordHasher().verify(printed, "long enough secret")


@pytest.mark.parametrize("language", ["uk", "en"])
async def test_every_page_is_fully_translated(hub: Hub, http, base_url: str, olena, language: str) -> None:
    session, _ = olena
    ref = await _form_lead(http, base_url)
    await hub.replies.add_note(int(ref[2:]), "note", "test")
    for path in ("", f"/leads/{ref}", "/breaches", "/team", "/reports?compare=previous", "/queue/rows"):
        resp = await session.get(f"{base_url}/dashboard{path}", params={"lang": language})
        text = await resp.text()
        assert resp.status == 200, path
        assert "dash." not in text, (path, text[text.find("dash.") - 80 : text.find("dash.") + 80])
        assert f'<html lang="{language}">' in text or path == "/queue/rows"


async def test_manager_marks_themselves_away_and_back_from_the_header(
    hub: Hub, http: aiohttp.ClientSession, base_url: str, olena
) -> None:
    lead_session, lead_csrf = olena
    taras, csrf = await sign_in(base_url, "taras")
    try:
        page = await (await taras.get(f"{base_url}/dashboard", params={"lang": "en"})).text()
        assert 'action="/dashboard/team/taras/away"' in page and 'data-away="0"' in page
        assert "Mark me away" in page and 'aria-label="My availability"' in page
        url = f"{base_url}/dashboard/team/taras/away"

        refused = await taras.post(url, data={"away": "1"}, allow_redirects=False)
        assert refused.status == 403 and not await hub.availability.is_away("taras")

        # The team's lead goes away too (a lead may do it for herself): nobody in support is
        # eligible, so a new lead waits unassigned.
        resp = await lead_session.post(
            f"{base_url}/dashboard/team/olena/away",
            data={"csrf": lead_csrf, "away": "1"},
            allow_redirects=False,
        )
        assert resp.status == 303 and resp.headers["Location"] == "/dashboard/team"
        resp = await taras.post(
            url, data={"csrf": csrf, "away": "1", "next": "/dashboard?status=all"}, allow_redirects=False
        )
        assert resp.status == 303 and resp.headers["Location"] == "/dashboard?status=all"
        assert await hub.availability.is_away("taras")
        ref = await _form_lead(http, base_url)
        lead = await hub.store.get_lead(int(ref[2:]))
        assert lead is not None and lead.assignee is None
        page = await (await taras.get(f"{base_url}/dashboard", params={"lang": "en"})).text()
        assert 'data-away="1"' in page and "I&#39;m back" in page

        # Back: the same path as Telegram's /back, so the unassigned queue drains to taras.
        resp = await taras.post(url, data={"csrf": csrf, "away": "0", "next": "https://evil.example/"})
        assert resp.status == 200 and str(resp.url) == f"{base_url}/dashboard"  # no open redirect
        assert not await hub.availability.is_away("taras")
        lead = await hub.store.get_lead(int(ref[2:]))
        assert lead is not None and lead.assignee == "taras"
        team = await (await lead_session.get(f"{base_url}/dashboard/team", params={"lang": "en"})).text()
        assert 'mark back<span class="sr-only"> — Олена Коваль</span>' in team  # her row on the team page
        assert 'action="/dashboard/team/olena/away"' in team and 'data-away="1"' in team  # her header
    finally:
        await taras.close()


async def test_an_agent_cannot_change_someone_elses_availability(hub: Hub, base_url: str, olena) -> None:
    taras, csrf = await sign_in(base_url, "taras")
    try:
        for target in ("olena", "iryna", "nobody"):
            resp = await taras.post(
                f"{base_url}/dashboard/team/{target}/away",
                data={"csrf": csrf, "away": "1"},
                allow_redirects=False,
            )
            assert resp.status == 403, target  # 403 even for an unknown id: no probing for ids
        assert not await hub.availability.is_away("olena") and not await hub.availability.is_away("iryna")
        # A lead or admin may change anyone's.
        lead_session, lead_csrf = olena
        resp = await lead_session.post(
            f"{base_url}/dashboard/team/iryna/away",
            data={"csrf": lead_csrf, "away": "1"},
            allow_redirects=False,
        )
        assert resp.status == 303 and await hub.availability.is_away("iryna")
        unknown = await lead_session.post(
            f"{base_url}/dashboard/team/nobody/away",
            data={"csrf": lead_csrf, "away": "1"},
            allow_redirects=False,
        )
        assert unknown.status == 404
    finally:
        await taras.close()


async def test_a_follow_ups_own_subject_shows_on_the_lead_page_and_in_the_api(
    http: aiohttp.ClientSession,
    base_url: str,
    auth: dict[str, str],
    olena: tuple[aiohttp.ClientSession, str],
) -> None:
    session, _ = olena
    ref = await _form_lead(http, base_url, subject="Котел не гріє")
    again = await _form_lead(http, base_url, subject="Рахунок за грудень", message="І ще питання")
    same = await _form_lead(http, base_url, subject="Re: котел НЕ гріє", message="Досі не гріє")
    assert ref == again == same
    page = await (await session.get(f"{base_url}/dashboard/leads/{ref}")).text()
    assert "Рахунок за грудень" in page
    assert "Re: котел НЕ гріє" not in page  # says no more than the lead's subject
    lead = await (await http.get(f"{base_url}/api/v1/leads/{ref}", headers=auth)).json()
    assert [(m["subject"], m["text"]) for m in lead["messages"]] == [
        (None, "Добрий день!"),
        ("Рахунок за грудень", "І ще питання"),
        (None, "Досі не гріє"),
    ]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"csrf={csrf}&text=\xff\xfe"),
        ("multipart/form-data", b"--x\r\nContent-Disposition: form-data\r\n\r\nhi\r\n--x--\r\n"),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n\r\nhi\r\n--x--\r\n"),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="text"\r\n'
         b"Content-Type: text/plain; charset=nope\r\n\r\nhi\r\n--x--\r\n"),
    ],
)  # fmt: skip
async def test_a_dashboard_post_body_that_cannot_be_read_is_a_400_page_not_a_500(
    hub: Hub, base_url: str, olena, content_type: str, body: bytes
) -> None:
    session, csrf = olena
    ref = await _form_lead(session, base_url)
    for headers in ({}, {"X-CSRF-Token": csrf}):
        resp = await session.post(
            f"{base_url}/dashboard/leads/{ref}/reply",
            data=body.replace(b"{csrf}", csrf.encode()),
            headers={"Content-Type": content_type, "Accept-Language": "en", **headers},
        )
        assert resp.status == 400, (headers, resp.status)
        assert "The form could not be read" in await resp.text()
    assert [m for m in await hub.store.list_messages(int(ref[2:])) if m.direction.value == "out"] == []


async def test_the_language_switch_works_on_a_page_opened_with_lang(base_url: str, olena) -> None:
    session, _ = olena
    page = await (await session.get(f"{base_url}/dashboard", params={"lang": "en", "status": "all"})).text()
    assert '<html lang="en"' in page
    link = html.unescape(re.search(r'href="(/dashboard/lang\?[^"]+)"', page).group(1))  # type: ignore[union-attr]
    switched = await session.get(f"{base_url}{link}")
    text = await switched.text()
    assert '<html lang="uk"' in text, switched.url  # the ?lang=en of the page no longer wins
    assert switched.url.path == "/dashboard" and switched.url.query.get("status") == "all"
    assert "lang" not in switched.url.query


@pytest.mark.parametrize(
    "typed",
    ["067 123 45 67", "+38 (067) 123-45-67", "8 067 123 45 67", "067-123-45-67", "123 45 67", "0671234567"],
)
async def test_a_phone_number_is_found_as_people_type_it(hub: Hub, base_url: str, olena, typed: str) -> None:
    session, _ = olena
    ref = await _form_lead(session, base_url, name="Телефонний Клієнт", email="", phone="+380671234567")
    other = await _form_lead(session, base_url, name="Інший", email="other@example.com", phone="0501112233")
    text = await (await session.get(f"{base_url}/dashboard/queue/rows", params={"q": typed})).text()
    shown = re.findall(r'data-lead="(L-\d+)"', text)
    assert shown == [ref], (typed, shown, other)


async def test_a_phone_capitalizing_the_manager_id_still_signs_in(base_url: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        page = await (await session.get(f"{base_url}/dashboard/login")).text()
        # Phones capitalize the first letter of a text field unless told not to.
        field = re.search(r'<input id="username"[^>]*>', page).group(0)  # type: ignore[union-attr]
        assert 'autocapitalize="none"' in field and 'spellcheck="false"' in field
        signed = await session.post(
            f"{base_url}/dashboard/login",
            data={"csrf": csrf_from(page), "username": " Olena ", "password": PASSWORDS["olena"]},
            allow_redirects=False,
        )
        assert signed.status == 303
        queue = await (await session.get(f"{base_url}/dashboard")).text()
        assert "Олена Коваль" in queue


async def test_a_lead_is_marked_as_spam_from_the_dashboard(hub: Hub, base_url: str, olena) -> None:
    session, csrf = olena
    ref = await _form_lead(session, base_url, message="Купуйте наші дешеві ліки!!!")
    page = await (await session.get(f"{base_url}/dashboard/leads/{ref}", params={"lang": "en"})).text()
    assert f'action="/dashboard/leads/{ref}/spam?lang=en"' in page
    done = await session.post(f"{base_url}/dashboard/leads/{ref}/spam", data={"csrf": csrf})
    assert done.status == 200 and "done=spam" in str(done.url)
    text = await (
        await session.get(f"{base_url}/dashboard/leads/{ref}", params={"lang": "en", "done": "spam"})
    ).text()
    assert "Marked as spam and resolved." in text and "spam</span>" in text
    lead = await hub.store.get_lead(int(ref[2:]))
    assert lead is not None and "spam" in lead.tags and lead.status is LeadStatus.RESOLVED
    types = [e.type for e in await hub.store.list_events(lead_number=lead.number)]
    assert "lead.tagged" in types and "lead.resolved" in types
    queue = await (await session.get(f"{base_url}/dashboard/queue/rows")).text()
    assert f'data-lead="{ref}"' not in queue  # out of the open queue
    again = await session.post(f"{base_url}/dashboard/leads/{ref}/spam", data={"csrf": csrf})
    assert "error=already_spam" in str(again.url)


async def test_the_reports_page_names_channels_in_the_pages_language(hub: Hub, base_url: str, olena) -> None:
    session, _ = olena
    await _form_lead(session, base_url)
    text = await (await session.get(f"{base_url}/dashboard/reports", params={"lang": "uk"})).text()
    select = text[text.index('id="r-channel"') : text.index("</select>", text.index('id="r-channel"'))]
    assert '<option value="webform" >вебформа</option>' in select
    assert '<option value="email" >ел. пошта</option>' in select
    table = text[text.index('id="table-channel"') :]
    table = table[: table.index("</table>")]
    assert '<th scope="row">вебформа</th>' in table and ">webform<" not in table


async def test_the_any_choice_of_each_filter_agrees_with_its_label_in_ukrainian(base_url: str, olena) -> None:
    session, _ = olena
    expected = {"team": "Будь-яка", "assignee": "Будь-хто", "kind": "Будь-який", "channel": "Будь-який"}
    for path, prefix in (("/dashboard", "f-"), ("/dashboard/reports", "r-")):
        text = await (await session.get(f"{base_url}{path}", params={"lang": "uk"})).text()
        for name, word in expected.items():
            select = text[text.index(f'id="{prefix}{name}"') :]
            assert select.split("</option>", 1)[0].endswith(f'<option value="">{word}'), (path, name)


async def test_a_reply_form_sent_twice_sends_the_customer_one_reply(hub: Hub, base_url: str, olena) -> None:
    session, csrf = olena
    ref = await _form_lead(session, base_url)
    page = await (await session.get(f"{base_url}/dashboard/leads/{ref}")).text()
    form = page[page.index(f'action="/dashboard/leads/{ref}/reply"') :]
    form = form[: form.index("</form>")]
    key = re.search(r'name="key" value="([^"]+)"', form)
    assert key is not None, form
    # A double click on "Send" (or a resend after a dropped connection) posts the form twice.
    for _ in range(2):
        sent = await session.post(
            f"{base_url}/dashboard/leads/{ref}/reply",
            data={"csrf": csrf, "text": "Дякуємо, перевіряємо.", "key": key.group(1)},
        )
        assert "done=reply" in str(sent.url)
    replies = [m for m in await hub.store.list_messages(int(ref[2:])) if m.direction.value == "out"]
    assert [m.text for m in replies if "перевіряємо" in m.text] == ["Дякуємо, перевіряємо."]
    # Back to the same page and another text: that is a reply of its own, not a refusal.
    edited = await session.post(
        f"{base_url}/dashboard/leads/{ref}/reply",
        data={"csrf": csrf, "text": "І ще: замовлення вже в дорозі.", "key": key.group(1)},
    )
    assert "done=reply" in str(edited.url)
    texts = [m.text for m in await hub.store.list_messages(int(ref[2:])) if m.direction.value == "out"]
    assert texts.count("Дякуємо, перевіряємо.") == 1 and "І ще: замовлення вже в дорозі." in texts
    # A fresh page gives a fresh key: the same words sent again on purpose are a second reply.
    again = await (await session.get(f"{base_url}/dashboard/leads/{ref}")).text()
    other = re.search(rf'action="/dashboard/leads/{ref}/reply"[\s\S]*?name="key" value="([^"]+)"', again)
    assert other is not None and other.group(1) != key.group(1)
    bad = await session.post(
        f"{base_url}/dashboard/leads/{ref}/reply", data={"csrf": csrf, "text": "Ще раз", "key": "нема ключа"}
    )
    assert "done=reply" in str(bad.url)  # a key the page did not make is ignored, the reply is sent


async def test_applying_filters_keeps_the_pages_language(base_url: str, olena) -> None:
    session, _ = olena
    for path, action in (
        ("/dashboard", 'action="/dashboard"'),
        ("/dashboard/reports", 'action="/dashboard/reports"'),
    ):
        text = await (await session.get(f"{base_url}{path}", params={"lang": "en"})).text()
        form = text[text.index(action) :]
        form = form[: form.index("</form>")]
        # The filter form is a GET: only its own fields are sent, so ?lang= must be one of them.
        assert '<input type="hidden" name="lang" value="en">' in form, path
        plain = await (await session.get(f"{base_url}{path}")).text()
        form = plain[plain.index(action) :]
        assert 'name="lang"' not in form[: form.index("</form>")], path


async def test_a_page_opened_with_lang_keeps_it_through_its_links_and_actions(
    hub: Hub, base_url: str, olena
) -> None:
    session, csrf = olena
    ref = await _form_lead(session, base_url)
    queue = await (await session.get(f"{base_url}/dashboard/queue/rows", params={"lang": "en"})).text()
    assert f'href="/dashboard/leads/{ref}?lang=en"' in queue
    page = await (await session.get(f"{base_url}/dashboard/leads/{ref}", params={"lang": "en"})).text()
    actions = re.findall(r'<form method="post" action="([^"]+)"', page)
    lead_actions = [a for a in actions if f"/leads/{ref}/" in a]
    assert lead_actions and all(a.endswith("?lang=en") for a in lead_actions), lead_actions
    for link in ("/dashboard", "/dashboard/breaches", "/dashboard/team", "/dashboard/reports"):
        assert f'href="{link}?lang=en"' in page, link
    done = await session.post(
        f"{base_url}/dashboard/leads/{ref}/note?lang=en", data={"csrf": csrf, "text": "нотатка"}
    )
    assert done.url.query.get("lang") == "en" and done.url.query.get("done") == "note"
    assert "Note added." in await done.text()
    refused = await session.post(
        f"{base_url}/dashboard/leads/{ref}/note?lang=en", data={"csrf": csrf, "text": ""}
    )
    assert refused.url.query.get("lang") == "en" and "Write some text first." in await refused.text()


async def test_a_report_asked_for_wrongly_shows_the_form_with_what_is_wrong(base_url: str, olena) -> None:
    session, _ = olena
    resp = await session.get(
        f"{base_url}/dashboard/reports",
        params={"from": "2026-12-02", "to": "2026-11-01", "team": "support", "lang": "en"},
    )
    assert resp.status == 422
    text = await resp.text()
    assert "The period must end after it starts." in text
    # The manager corrects the dates in the same form, not on an error page.
    form = text[text.index('action="/dashboard/reports"') :]
    form = form[: form.index("</form>")]
    assert 'name="from" value="2026-12-02"' in form and 'name="to" value="2026-11-01"' in form
    assert '<option value="support" selected>' in form
    assert 'id="kpi-summary"' not in text


async def test_a_page_whose_leads_all_went_away_links_back_to_the_first_page(
    hub: Hub, base_url: str, olena
) -> None:
    session, _ = olena
    now = utcnow()
    async with hub.store.deferred_commit():
        for number in range(1, QUEUE_PAGE + 3):
            await hub.store.create_lead(
                build_lead(number, "c-gone-page", first_response_due=now + timedelta(minutes=number))
            )
    first = await (await session.get(f"{base_url}/dashboard", params={"lang": "en"})).text()
    link = _page_link(first, "next")
    assert link is not None
    for number in (QUEUE_PAGE + 1, QUEUE_PAGE + 2):  # page 2's leads are resolved meanwhile
        await hub.actions.resolve(number, by="test")
    for path in (link, link.replace("/dashboard?", "/dashboard/queue/rows?")):
        text = await (await session.get(f"{base_url}{path}")).text()
        assert _shown(text) == [] and "Nothing here." in text, path
        back = _page_link(text, "first")
        assert back is not None and "lang=en" in back, path


async def test_the_team_pages_away_toggle_keeps_the_pages_language(hub: Hub, base_url: str, olena) -> None:
    session, csrf = olena
    page = await (await session.get(f"{base_url}/dashboard/team", params={"lang": "en"})).text()
    assert 'action="/dashboard/team/taras/away?lang=en"' in page
    done = await session.post(
        f"{base_url}/dashboard/team/taras/away?lang=en", data={"csrf": csrf, "away": "1"}
    )
    assert done.url.path == "/dashboard/team" and done.url.query.get("lang") == "en"
    assert '<html lang="en"' in await done.text()
    assert await hub.availability.is_away("taras")


async def test_merging_contacts_asks_to_confirm_whose_contact_is_merged(
    hub: Hub, base_url: str, olena
) -> None:
    session, csrf = olena
    ref = await _form_lead(session, base_url, name="Петро Іванченко", email="petro@example.com")
    stranger = await _form_lead(session, base_url, name="Зовсім Інша Людина", email="stranger@example.com")
    lead = await hub.store.get_lead(int(ref[2:]))
    other = await hub.store.get_lead(int(stranger[2:]))
    assert lead is not None and other is not None
    # A typo in the lead number must not merge a stranger in at once: the page shows whose contact
    # that is and asks again.
    asked = await session.post(
        f"{base_url}/dashboard/leads/{ref}/merge?lang=en", data={"csrf": csrf, "other": stranger}
    )
    assert asked.url.query.get("merge") == stranger and asked.url.query.get("lang") == "en"
    text = await asked.text()
    box = text[text.index('id="merge-confirm"') :]
    box = box[: box.index("</form>")]
    assert "Зовсім Інша Людина" in box and "stranger@example.com" in box and stranger in box
    assert await hub.store.list_events(types=["contact.merged"]) == []
    assert (await hub.store.get_lead(other.number)).contact_id == other.contact_id  # type: ignore[union-attr]
    again = await session.post(
        f"{base_url}/dashboard/leads/{ref}/merge",
        data={"csrf": csrf, "other": stranger},
        allow_redirects=False,
    )
    assert again.headers["Location"].endswith("#merge-confirm")  # scrolled to on a phone
    done = await session.post(
        f"{base_url}/dashboard/leads/{ref}/merge", data={"csrf": csrf, "other": stranger, "confirm": "yes"}
    )
    assert done.url.query.get("done") == "merge"
    assert (await hub.store.get_lead(other.number)).contact_id == lead.contact_id  # type: ignore[union-attr]
    # A ?merge= in a link names no lead the viewer may merge: nothing is shown.
    page = await (await session.get(f"{base_url}/dashboard/leads/{ref}", params={"merge": "L-999"})).text()
    assert 'id="merge-confirm"' not in page


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"compare_from": "2026-10-01"}, "compare_to"),
        ({"compare_to": "2026-10-31"}, "compare_from"),
        ({"compare": "yes"}, "compare"),
    ],
)
async def test_half_a_comparison_period_or_an_unknown_compare_is_422(
    http, base_url: str, auth, olena, params: dict[str, str], field: str
) -> None:
    # It answered 200 without the comparison, which reads as "compared, nothing changed".
    resp = await http.get(f"{base_url}/api/v1/reports/kpi", params=params, headers=auth)
    assert resp.status == 422, await resp.text()
    assert list((await resp.json())["fields"]) == [field]
    session, _ = olena
    page = await session.get(
        f"{base_url}/dashboard/reports", params=params, headers={"Accept-Language": "uk"}
    )
    assert page.status == 422
    assert "Бракує" in html.unescape(await page.text()) or "Порівняти" in html.unescape(await page.text())
    both = {"compare_from": "2026-10-01", "compare_to": "2026-10-31"}
    resp = await http.get(f"{base_url}/api/v1/reports/kpi", params=both, headers=auth)
    assert resp.status == 200 and "compare" in await resp.json()


async def test_csv_opens_as_columns_in_a_ukrainian_excel_and_plain_for_english(
    hub: Hub, http, base_url: str, olena
) -> None:
    await _build_history(hub)
    session, _ = olena
    params = {"from": "2026-03-02", "to": "2026-03-05", "table": "summary"}

    async def export(headers: dict[str, str], **extra: str) -> str:
        resp = await session.get(
            f"{base_url}/dashboard/reports/csv", params={**params, **extra}, headers=headers
        )
        assert resp.status == 200, await resp.text()
        body = await resp.read()
        assert body.startswith(b"\xef\xbb\xbf")  # the BOM: Excel reads the file as UTF-8
        return body.decode("utf-8-sig")

    # A comma file showed as one column in Excel with a Ukrainian locale, and 70.0 became text
    # (1.5 a date): there the list separator is ";" and the decimal one ",".
    uk = await export({"Accept-Language": "uk"})
    (row,) = list(csv.DictReader(io.StringIO(uk), delimiter=";"))
    assert row["received"] == "10" and row["within_target_pct"] == "70,0"
    en = await export({"Accept-Language": "en"})
    (row,) = list(csv.DictReader(io.StringIO(en)))
    assert row["received"] == "10" and row["within_target_pct"] == "70.0"
    assert await export({"Accept-Language": "uk"}, sep="comma") == en
    bad = await session.get(f"{base_url}/dashboard/reports/csv", params={**params, "sep": "tab"})
    assert bad.status == 422


async def test_a_next_response_owed_shows_its_countdown_sorts_by_it_and_its_breach_is_listed(
    settings_factory: Callable[..., Settings],
) -> None:
    """Answered, then the customer wrote again: the queue shows the next response running (not
    "answered"), sorts the lead by that due time, and its breach is on the breaches page."""
    policy = {"first_response": "4h", "next_response": "1h"}
    sla = {"policies": {"message": policy, "service_request": policy}}
    hub = Hub(settings_factory(managers=managers_with_passwords(), sla=sla))
    await hub.start()
    base_url = f"http://127.0.0.1:{hub.web_port}"
    session, csrf = await sign_in(base_url, "olena")
    try:
        ref = await _form_lead(session, base_url, email="again@example.com", name="Again")
        others = [await _form_lead(session, base_url, email=f"c{i}@example.com") for i in range(2)]
        page = await (await session.get(f"{base_url}/dashboard/leads/{ref}")).text()
        key = re.search(
            r'name="key" value="([^"]+)"', page[page.index(f'action="/dashboard/leads/{ref}/reply"') :]
        )
        assert key is not None
        sent = await session.post(
            f"{base_url}/dashboard/leads/{ref}/reply",
            data={"csrf": csrf, "text": "Перевіряємо.", "key": key.group(1)},
        )
        assert "done=reply" in str(sent.url)
        # The customer writes again on the answered lead: a next response is owed within 1 h.
        again = await _form_lead(session, base_url, email="again@example.com", name="Again", message="І ще")
        assert again == ref
        lead = await hub.store.get_lead(int(ref[2:]))
        assert lead is not None and lead.sla_target == "next_response" and lead.sla_due is not None
        assert lead.first_response_at is not None

        def row_of(text: str, lead_ref: str) -> str:
            row = text[text.rindex("<tr", 0, text.index(f'data-lead="{lead_ref}"')) :]
            return row[: row.index("</tr>")]

        for path in ("/dashboard", "/dashboard/queue/rows"):
            text = await (await session.get(f"{base_url}{path}", params={"lang": "en"})).text()
            # Due in 1 h, before the first responses due in 4 h.
            assert _shown(text) == [int(r[2:]) for r in (ref, *others)], path
            row = row_of(text, ref)
            assert f'data-due="{lead.sla_due.isoformat()}"' in row, row
            assert "next response" in row and ">answered<" not in row, row
            assert "first response" in row_of(text, others[0])
        lead_page = await (
            await session.get(f"{base_url}/dashboard/leads/{ref}", params={"lang": "en"})
        ).text()
        assert f'data-due="{lead.sla_due.isoformat()}"' in lead_page and "next response" in lead_page

        await hub.sweeper.sweep(lead.sla_due + timedelta(seconds=1))
        text = await (await session.get(f"{base_url}/dashboard", params={"lang": "en"})).text()
        assert 'class="state-breached"' in row_of(text, ref)
        breaches = await (await session.get(f"{base_url}/dashboard/breaches", params={"lang": "en"})).text()
        current = breaches[breaches.index('id="breaches-current"') : breaches.index('id="breaches-past"')]
        assert re.findall(r'href="/dashboard/leads/(L-\d+)[?"]', current) == [ref], current
        assert "Current (still open) (1)" in current and "next response" in current
        assert 'data-target="next_response"' in current
    finally:
        await session.close()
        await hub.stop()


async def test_a_next_response_breach_row_shows_its_own_due_time_and_is_late_until_the_reply(
    hub: Hub, base_url: str, olena
) -> None:
    """The row of a next-response breach counts lateness from that response's due time to the
    reply that answered it, not from the first response's due time long before."""
    session, _ = olena
    now = utcnow()
    due = now - timedelta(hours=3)
    person = await hub.store.create_contact(build_contact(build_email("next@example.com"), name="Next"))
    await hub.store.create_lead(
        build_lead(1, person.id, status=LeadStatus.OPEN, first_response_due=now - timedelta(hours=30))
    )
    # Answered in time, then the customer wrote again: a next response due 3 h ago.
    await hub.store.update_lead(1, LeadChanges(first_response_at=now - timedelta(hours=31), clear_sla=True))
    await hub.store.update_lead(
        1,
        LeadChanges(
            sla_target="next_response",
            sla_started_at=due - timedelta(hours=1),
            sla_due=due,
            sla_warn_due=None,
        ),
    )
    claims = await hub.store.claim_sla_marks(now - timedelta(hours=2), 10)
    assert [(c.target, c.level) for c in claims] == [("next_response", "breach")]
    await hub.replies.record_reply(1, "Вибачте за затримку", "olena", now=now)
    text = await (await session.get(f"{base_url}/dashboard/breaches", params={"lang": "en"})).text()
    current = text[text.index('id="breaches-current"') : text.index('id="breaches-past"')]
    assert "L-1" in current and 'data-target="next_response"' in current, current
    assert "3h 00m" in current and "30h" not in current and "1d" not in current, current


# --- customers' attachments ------------------------------------------------------------------

_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4
_PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
_HTML = b"<html><body><script>fetch('/dashboard/team')</script>hi</body></html>"
_SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script></svg>'
_NOTE = "Котел гуде й вимикається.\n"


async def _email_lead(
    hub: Hub,
    attachments: list[tuple[str, str, bytes | str]],
    max_bytes: int | None = None,
    sender: str = "Петро Іванченко <petro@example.com>",
    via_inbox: bool = False,
) -> tuple[Lead, Message]:
    """A customer's mail through the email channel's own parser, store and decoder (as the
    poller takes it: attachment files first, then intake; `via_inbox` keeps the raw mail in the
    store's inbox as the poller does)."""
    raw, _ = make_mail(
        sender=sender,
        subject="Котел не працює",
        text="Фото котла і рахунок у вкладеннях.",
        attachments=attachments,
    )
    parsed = parse_email(raw)
    settings = hub.settings.email
    if max_bytes is not None:
        settings = settings.model_copy(update={"max_attachment_bytes": max_bytes})
    files = AttachmentStore(settings.attachments_dir)
    for part in parsed.attachments:
        if len(part.data) <= settings.max_attachment_bytes:
            await files.put(part.data)
    decoder = EmailDecoder(settings)
    if via_inbox:
        stored, _ = await hub.store.inbox_put("email", f"mail-{new_id()}", raw, utcnow())
        processed = await hub.inbox.process(stored, lambda it: decoder.inbound(it, parsed))
        assert processed is not None
        return processed.lead, processed.message
    item = InboxItem(1, "email", f"mail-{new_id()}", raw, utcnow())
    result = await hub.intake.accept(decoder.inbound(item, parsed))
    return result.lead, result.message


def _file_links(page: str) -> dict[str, str]:
    """Attachment name -> its link on a lead page."""
    return {
        html.unescape(name): html.unescape(href)
        for href, name in re.findall(r'<a href="([^"]*/attachments/\d+)"[^>]*>([^<]*)</a>', page)
    }


async def test_a_customers_attachments_open_from_the_lead_page_safely(hub: Hub, base_url: str, olena) -> None:
    session, _ = olena
    lead, message = await _email_lead(
        hub,
        [
            ("Фото котла.jpg", "image/jpeg", _JPEG),
            ("Рахунок №5.pdf", "application/pdf", _PDF),
            ("пояснення.txt", "text/plain; charset=koi8-u", _NOTE),
            ("page.html", "text/html", _HTML),
            ("logo.svg", "image/svg+xml", _SVG),
            ("video.bin", "application/octet-stream", b"x" * 3000),
        ],
        max_bytes=2000,
    )
    page = await (await session.get(f"{base_url}/dashboard/leads/{lead.ref}")).text()
    links = _file_links(page)
    # Every kept file is a link; the one dropped over the size limit is only named.
    assert sorted(links) == sorted(
        ["Фото котла.jpg", "Рахунок №5.pdf", "пояснення.txt", "page.html", "logo.svg"]
    )
    assert "video.bin" in page

    async def opened(name: str) -> tuple[aiohttp.ClientResponse, bytes]:
        resp = await session.get(f"{base_url}{links[name]}", allow_redirects=False)
        body = await resp.read()
        assert resp.status == 200, (name, resp.status)
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        csp = resp.headers["Content-Security-Policy"]
        assert csp.split(";")[0].strip() == "sandbox" and "script-src 'self'" not in csp, csp
        assert resp.content_disposition is not None and resp.content_disposition.filename == name
        return resp, body

    photo, body = await opened("Фото котла.jpg")
    assert body == _JPEG and photo.headers["Content-Type"] == "image/jpeg"
    disposition = photo.headers["Content-Disposition"]
    assert (
        disposition.startswith("inline; ") and "filename*=UTF-8''%D0%A4%D0%BE%D1%82%D0%BE%20" in disposition
    )
    assert disposition.encode("ascii")  # the header itself stays ASCII
    pdf, body = await opened("Рахунок №5.pdf")
    assert body == _PDF and pdf.headers["Content-Type"] == "application/pdf"
    assert pdf.headers["Content-Disposition"].startswith("inline; ")
    note, body = await opened("пояснення.txt")
    assert (
        note.headers["Content-Type"] == "text/plain; charset=koi8-u"
        and body.decode("koi8-u").splitlines() == _NOTE.splitlines()
    )
    for name, data in (("page.html", _HTML), ("logo.svg", _SVG)):
        resp, body = await opened(name)
        assert body == data
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Disposition"].startswith("attachment; ")

    base = f"{base_url}/dashboard/leads/{lead.ref}/messages"
    other, other_message = await _email_lead(
        hub, [("other.pdf", "application/pdf", _PDF + b"other")], sender="Ганна <hanna@example.com>"
    )
    assert other.number != lead.number
    for wrong in (
        f"{base}/{message.id}/attachments/5",  # dropped over the limit: no file
        f"{base}/{message.id}/attachments/6",
        f"{base}/{message.id}/attachments/x",
        f"{base}/nosuchmessage/attachments/0",
        f"{base}/{other_message.id}/attachments/0",  # another lead's message
        f"{base_url}/dashboard/leads/L-99999/messages/{message.id}/attachments/0",
    ):
        assert (await session.get(wrong)).status == 404, wrong
    # A file gone from disk (restored from an old backup, cleaned up by hand) is a 404 too.
    digest = hashlib.sha256(_PDF).hexdigest()
    (Path(hub.settings.email.attachments_dir) / digest[:2] / digest).unlink()
    assert (await session.get(f"{base_url}{links['Рахунок №5.pdf']}")).status == 404


async def test_attachments_open_only_for_who_may_open_the_lead(hub: Hub, base_url: str, olena) -> None:
    session, csrf = olena
    lead, message = await _email_lead(hub, [("Рахунок.pdf", "application/pdf", _PDF)])
    url = f"{base_url}/dashboard/leads/{lead.ref}/messages/{message.id}/attachments/0"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as stranger:
        signed_out = await stranger.get(url, allow_redirects=False)
        assert signed_out.status in (302, 303) and "/dashboard/login" in signed_out.headers["Location"]
        assert _PDF not in await signed_out.read()
    await hub.actions.assign(lead.number, "andrii", by="test")
    taras, _ = await sign_in(base_url, "taras")
    try:
        refused = await taras.get(url)
        assert refused.status == 403 and _PDF not in await refused.read()
        await hub.actions.assign(lead.number, "taras", by="test")
        allowed = await taras.get(url)
        assert allowed.status == 200 and await allowed.read() == _PDF
    finally:
        await taras.close()
    erased = await session.post(
        f"{base_url}/dashboard/leads/{lead.ref}/erase", data={"csrf": csrf, "confirm": "yes"}
    )
    assert "done=erased" in str(erased.url)
    assert (await session.get(url)).status == 404


async def test_nobody_in_the_assign_list_puts_the_lead_back_in_the_unassigned_queue(
    hub: Hub, http, base_url: str, olena
) -> None:
    session, _csrf = olena
    ref = await _form_lead(http, base_url)
    number = int(ref[2:])
    await hub.actions.assign(number, "taras", by="test")
    page = await (await session.get(f"{base_url}/dashboard/leads/{ref}")).text()
    form = page[page.index(f'action="/dashboard/leads/{ref}/assign"') :]
    assert '<option value="none"' in form[: form.index("</form>")] and "Ніхто (назад у чергу)" in form
    # An agent may not take someone else's lead away.
    taras, taras_csrf = await sign_in(base_url, "taras")
    iryna, iryna_csrf = await sign_in(base_url, "iryna")
    try:
        refused = await iryna.post(
            f"{base_url}/dashboard/leads/{ref}/assign", data={"csrf": iryna_csrf, "manager": "none"}
        )
        assert refused.status in (403, 404)
        lead = await hub.store.get_lead(number)
        assert lead is not None and lead.assignee == "taras"
        # Its own agent hands it back.
        done = await taras.post(
            f"{base_url}/dashboard/leads/{ref}/assign", data={"csrf": taras_csrf, "manager": "none"}
        )
        assert done.status == 200 and "done=unassign" in str(done.url), done.url
    finally:
        await taras.close()
        await iryna.close()
    lead = await hub.store.get_lead(number)
    assert lead is not None and lead.assignee is None
    assert (await hub.store.load_by_assignee(["taras"]))["taras"] == (0, 0)
    assert (await hub.store.count_active_by_assignee(["taras"]))["taras"] == 0
    assert [x.number for x in await hub.store.oldest_unassigned(10)] == [number]
    events = [e for e in await hub.store.list_events(number) if e.type == "lead.unassigned"]
    assert [(e.data["by"], e.data["previous"]) for e in events] == [("taras", "taras")]
    page = await (await session.get(f"{base_url}/dashboard/leads/{ref}?done=unassign")).text()
    assert "Призначення знято" in page
    history = page[page.index('id="assign-h"') : page.index('id="contact-h"')]
    assert history.count("Не призначено") >= 2  # the current holder line and the history entry


async def test_a_note_form_sent_twice_stores_one_note(hub: Hub, base_url: str, olena) -> None:
    session, csrf = olena
    ref = await _form_lead(session, base_url)
    number = int(ref[2:])
    page = await (await session.get(f"{base_url}/dashboard/leads/{ref}")).text()
    form = page[page.index(f'action="/dashboard/leads/{ref}/note"') :]
    key = re.search(r'name="key" value="([0-9a-f]{32})"', form[: form.index("</form>")])
    assert key is not None, form
    reply = re.search(rf'action="/dashboard/leads/{ref}/reply"[\s\S]*?name="key" value="([^"]+)"', page)
    assert reply is not None and reply.group(1) != key.group(1)

    def notes() -> Any:
        return hub.store.list_messages(number)

    for _ in range(2):
        sent = await session.post(
            f"{base_url}/dashboard/leads/{ref}/note",
            data={"csrf": csrf, "text": "Клієнт просив передзвонити", "key": key.group(1)},
        )
        assert "done=note" in str(sent.url), sent.url
    texts = [m.text for m in await notes() if m.direction.value == "note"]
    assert texts == ["Клієнт просив передзвонити"]
    # The same page used again for another note: a note of its own.
    other = await session.post(
        f"{base_url}/dashboard/leads/{ref}/note",
        data={"csrf": csrf, "text": "І ще одне", "key": key.group(1)},
    )
    assert "done=note" in str(other.url)
    texts = [m.text for m in await notes() if m.direction.value == "note"]
    assert texts == ["Клієнт просив передзвонити", "І ще одне"]


def _handled_today(page: str, name: str) -> int:
    row = page[page.index(f'<th scope="row">{name}</th>') :]
    row = row[: row.index("</tr>")]
    return int(re.findall(r"<td>(\d+)</td>", row)[-1])


async def test_handled_today_credits_who_replied_not_who_holds_the_lead_now(
    hub: Hub, base_url: str, olena
) -> None:
    session, csrf = olena
    ref = await _form_lead(session, base_url)
    await hub.actions.assign(int(ref[2:]), "olena", by="test")
    sent = await session.post(
        f"{base_url}/dashboard/leads/{ref}/reply", data={"csrf": csrf, "text": "Вже дивимось."}
    )
    assert "done=reply" in str(sent.url)
    await hub.actions.assign(int(ref[2:]), "taras", by="test")
    page = await (await session.get(f"{base_url}/dashboard/team")).text()
    assert (_handled_today(page, "Олена Коваль"), _handled_today(page, "Тарас Бондар")) == (1, 0)


async def test_erasing_a_contact_deletes_its_attachment_files_but_keeps_ones_another_message_shares(
    hub: Hub, base_url: str, olena
) -> None:
    session, csrf = olena
    erased, erased_message = await _email_lead(
        hub,
        [("Фото котла.jpg", "image/jpeg", _JPEG), ("Рахунок №5.pdf", "application/pdf", _PDF)],
        via_inbox=True,
    )
    kept, kept_message = await _email_lead(
        hub, [("котел.jpg", "image/jpeg", _JPEG)], sender="Ірина Коваль <iryna@example.com>", via_inbox=True
    )
    files = hub.attachments
    shared, unique = (a.ref for a in erased_message.attachments)
    assert kept_message.attachments[0].ref == shared  # one file on disk for both customers
    assert await files.find(shared) is not None and await files.find(unique) is not None

    resp = await session.post(
        f"{base_url}/dashboard/leads/{erased.ref}/erase", data={"csrf": csrf, "confirm": "yes"}
    )
    assert "done=erased" in str(resp.url), resp.url

    assert await files.find(unique) is None  # only the erased customer's message held the invoice
    assert await files.get(shared) == _JPEG
    page = await (await session.get(f"{base_url}/dashboard/leads/{kept.ref}")).text()
    opened = await session.get(base_url + _file_links(page)["котел.jpg"])
    assert opened.status == 200 and await opened.read() == _JPEG
    # The raw mail carries the attachments too: the erased lead's inbox row goes, the other stays.
    rows = [
        item for status in ("pending", "done", "quarantined") for item in await hub.store.inbox_list(status)
    ]
    assert [(r.status, r.lead_number) for r in rows] == [("done", kept.number)]


async def test_an_erasure_interrupted_before_its_files_went_deletes_them_when_run_again(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    lead, message = await _email_lead(hub, [("Рахунок №5.pdf", "application/pdf", _PDF)])
    (ref,) = (a.ref for a in message.attachments)

    async def crash(ref: str) -> bool:
        raise OSError(f"the process died before deleting {ref}")

    with monkeypatch.context() as patch:
        patch.setattr(hub.attachments, "delete", crash)
        with pytest.raises(OSError):
            await hub.erasure.erase(lead.contact_id, by="olena")
    assert await hub.store.list_messages(lead.number) == []  # the store's erasure committed
    assert await hub.attachments.find(ref) is not None

    await hub.erasure.erase(lead.contact_id, by="olena")  # the lead page still offers it
    assert await hub.attachments.find(ref) is None
