"""The dashboard in real headless Chromium against a hub on loopback.

Screenshots of the main pages (desktop and phone) go to test-output/screenshots/dashboard-*.png.
"""

from __future__ import annotations

import base64
import statistics
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from hub.config import Settings
from hub.domain import Event, EventType, Identity, IdentityKind, Inbound, ThreadHints, utcnow
from hub.web.dashboard import views
from tests.browser.conftest import screenshot_path
from tests.contract.builders import new_lead
from tests.integration.test_dashboard import _email_lead
from tests.support.dashboard import PASSWORDS, managers_with_passwords

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 15_000


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    # A short test policy: messages breach 2 s after arrival, the sweep runs every second.
    return settings_factory(
        managers=managers_with_passwords(),
        sla={
            "check_every": "1s",
            "policies": {"message": {"first_response": "2s"}, "service_request": {"first_response": "12h"}},
        },
    )


async def _sign_in(browser: Any, base_url: str, manager: str, viewport: dict[str, int] | None = None) -> Any:
    context = await browser.new_context(viewport=viewport or {"width": 1280, "height": 900}, locale="uk-UA")
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    await page.goto(f"{base_url}/dashboard")
    assert "/dashboard/login" in page.url
    await page.get_by_label("Ідентифікатор менеджера").fill(manager)
    await page.get_by_label("Пароль").fill(PASSWORDS[manager])
    await page.get_by_role("button", name="Увійти").click()
    await page.wait_for_url(f"{base_url}/dashboard")
    return page


async def _shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(screenshot_path(f"dashboard-{name}")), full_page=True)


async def _submit_form(base_url: str, **fields: str) -> str:
    async with aiohttp.ClientSession() as http:
        body = {
            "name": "Марія Гнатюк",
            "email": "maria@example.com",
            "message": "Де моє замовлення?",
            **fields,
        }
        resp = await http.post(f"{base_url}/forms/contact", json=body)
        assert resp.status == 201
        ref: str = (await resp.json())["lead"]
        return ref


async def test_lead_arrives_live_gets_a_reply_and_breaches_live(
    hub: Hub, browser: Any, base_url: str, auth: dict[str, str]
) -> None:
    page = await _sign_in(browser, base_url, "olena")
    await page.wait_for_selector('#live-status[data-connected="1"]')

    first = await _submit_form(base_url)
    await page.wait_for_selector(f'tr[data-lead="{first}"]')  # appeared without a reload
    await page.wait_for_selector(f'tr[data-lead="{first}"] .badge.breached')  # the sweep's breach, live
    second = await _submit_form(base_url, name="Іван Петренко", email="ivan@example.com", message="Терміново")
    await page.wait_for_selector(f'tr[data-lead="{second}"]')
    await _shot(page, "queue-desktop")

    # Search by email finds exactly that lead.
    await page.get_by_label("Пошук").fill("ivan@example.com")
    await page.get_by_role("button", name="Застосувати").click()
    await page.wait_for_selector(f'tr[data-lead="{second}"]')
    assert await page.locator(f'tr[data-lead="{first}"]').count() == 0
    await page.wait_for_selector(f'tr[data-lead="{second}"] .badge.breached')  # live on a filtered view too

    await page.goto(f"{base_url}/dashboard/leads/{first}")
    await page.get_by_label("Відповідь клієнтові").fill("Вже перевіряємо, дякуємо!")
    await page.get_by_role("button", name="Надіслати відповідь").click()
    await page.wait_for_selector(".notice")
    assert await page.locator(".msg-out", has_text="Вже перевіряємо").count() == 1
    await _shot(page, "lead-desktop")

    # A POST without the CSRF token, from the signed-in page itself, is refused.
    status = await page.evaluate(
        """(ref) => fetch('/dashboard/leads/' + ref + '/note', {method: 'POST',
            headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'text=x'}).then(r => r.status)""",
        first,
    )
    assert status == 403

    # The report's figures equal what the leads themselves say.
    async with aiohttp.ClientSession() as http:
        leads = []
        for ref in (first, second):
            resp = await http.get(f"{base_url}/api/v1/leads/{ref}", headers=auth)
            leads.append(await resp.json())
    frts = [
        (
            datetime.fromisoformat(x["first_response_at"]) - datetime.fromisoformat(x["created_at"])
        ).total_seconds()
        for x in leads
        if x["first_response_at"]
    ]
    await page.goto(f"{base_url}/dashboard/reports")
    summary = page.locator("#kpi-summary")
    assert await summary.locator('[data-figure="received"]').get_attribute("data-value") == "2"
    breached = sum(1 for x in leads if x["breached"])
    assert breached == 2
    assert await summary.locator('[data-figure="breached"]').get_attribute("data-value") == str(breached)
    assert await summary.locator('[data-figure="first_response_mean_s"]').get_attribute("data-value") == str(
        round(statistics.mean(frts), 3)
    )
    median = await summary.locator('[data-figure="first_response_median_s"]').get_attribute("data-value")
    assert float(median or "nan") == pytest.approx(statistics.median(frts), abs=0.001)
    await page.wait_for_function("() => window.Chart && Chart.getChart('chart-daily') !== undefined")
    await _shot(page, "reports-desktop")

    await page.goto(f"{base_url}/dashboard/breaches")
    assert await page.locator(f'a:text-is("{first}")').count() == 1
    await _shot(page, "breaches-desktop")
    await page.goto(f"{base_url}/dashboard/team")
    await _shot(page, "team-desktop")

    phone = await _sign_in(browser, base_url, "olena", viewport=PHONE)
    await _shot(phone, "queue-phone")
    await phone.goto(f"{base_url}/dashboard/leads/{first}")
    await _shot(phone, "lead-phone")
    await phone.goto(f"{base_url}/dashboard/reports")
    await phone.wait_for_function("() => window.Chart && Chart.getChart('chart-daily') !== undefined")
    await _shot(phone, "reports-phone")


async def test_agent_cannot_open_another_agents_lead(hub: Hub, browser: Any, base_url: str) -> None:
    ref = await _submit_form(base_url)
    await hub.actions.assign(int(ref[2:]), "olena", by="test")
    own = await _submit_form(base_url, email="other@example.com", name="Інший Клієнт")
    await hub.actions.assign(int(own[2:]), "taras", by="test")
    page = await _sign_in(browser, base_url, "taras")
    await page.wait_for_selector(f'tr[data-lead="{own}"]')
    assert await page.locator(f'tr[data-lead="{ref}"]').count() == 0
    response = await page.goto(f"{base_url}/dashboard/leads/{ref}")
    assert response is not None and response.status == 403
    response = await page.goto(f"{base_url}/dashboard/reports")
    assert response is not None and response.status == 403
    response = await page.goto(f"{base_url}/dashboard/leads/{own}")
    assert response is not None and response.status == 200


async def test_manager_marks_themselves_away_and_back_from_the_header(
    hub: Hub, browser: Any, base_url: str
) -> None:
    page = await _sign_in(browser, base_url, "taras")
    toggle = page.get_by_role("form", name="Моя доступність")
    assert await toggle.get_attribute("data-away") == "0"
    await toggle.get_by_role("button", name="Позначити, що мене немає").click()
    await page.wait_for_selector('#my-availability[data-away="1"]')
    assert page.url == f"{base_url}/dashboard"  # back on the page the toggle was used on
    assert await hub.availability.is_away("taras")
    await _shot(page, "away-toggle-desktop")
    await page.get_by_role("button", name="Я на місці").click()
    await page.wait_for_selector('#my-availability[data-away="0"]')
    assert not await hub.availability.is_away("taras")


async def test_long_names_subjects_and_preformatted_mail_never_widen_the_page(
    hub: Hub, browser: Any, base_url: str
) -> None:
    ref = await _submit_form(
        base_url,
        name="Д" * 150,
        subject="Тема" + "x" * 240,
        message="Повідомлення-без-пробілів-" * 40,
    )
    long_line = "ЛогПомилки:" + "0123456789" * 60
    inbound = Inbound(
        channel="email",
        external_id="wide-mail",
        sender=Identity(IdentityKind.EMAIL, "maria@example.com", "Марія"),
        text=long_line,
        html=f"<p>Журнал:</p><pre>{long_line}\n{long_line}</pre><table><tr><td>{long_line}</td></tr></table>",
        received_at=utcnow(),
        thread=ThreadHints(lead_number=int(ref[2:])),
    )
    await hub.intake.accept(inbound)
    widths = "() => [document.documentElement.scrollWidth, window.innerWidth]"
    for name, viewport in (("phone", PHONE), ("desktop", {"width": 1366, "height": 900})):
        page = await _sign_in(browser, base_url, "olena", viewport=viewport)
        for path in ("", f"/leads/{ref}", "/team", "/breaches"):
            await page.goto(f"{base_url}/dashboard{path}")
            scroll_width, inner_width = await page.evaluate(widths)
            assert scroll_width == inner_width, (name, path, scroll_width)
        # The queue table itself fits: a long name wraps instead of pushing columns off-screen.
        await page.goto(f"{base_url}/dashboard")
        table = await page.evaluate("() => document.querySelector('table.queue').scrollWidth")
        assert table <= viewport["width"], (name, table)
        await page.goto(f"{base_url}/dashboard/leads/{ref}")
        # Preformatted mail stays inside its message bubble.
        inside = await page.evaluate(
            """() => [...document.querySelectorAll('.msg .body.html pre')].every(pre => {
                const bubble = pre.closest('.msg').getBoundingClientRect();
                const box = pre.getBoundingClientRect();
                return box.left >= bubble.left && box.right <= bubble.right;
            })"""
        )
        assert inside, name
        await _shot(page, f"long-lead-{name}")


async def test_the_lead_page_counts_down_in_the_pages_language(hub: Hub, browser: Any, base_url: str) -> None:
    ref = await _submit_form(base_url)  # a message breaches 2 s after arrival
    page = await _sign_in(browser, base_url, "olena")
    await page.goto(f"{base_url}/dashboard/leads/{ref}")
    countdown = page.locator(".due .countdown")
    await countdown.filter(has_text="прострочено на").wait_for()
    assert "overdue" not in (await countdown.inner_text())


@pytest.mark.parametrize("size", ["phone", "desktop"])
async def test_the_queue_pages_forward_and_back_keeping_filters_language_and_live_rows(
    hub: Hub, browser: Any, base_url: str, monkeypatch: pytest.MonkeyPatch, size: str
) -> None:
    monkeypatch.setattr(views, "QUEUE_PAGE", 3)
    now = utcnow()
    async with hub.store.deferred_commit():
        # Seven overdue leads (L-1 the most overdue), so a form lead arriving later sorts last.
        for number in range(1, 8):
            await new_lead(hub.store, "c-pages", first_response_due=now - timedelta(hours=10 - number))
    viewport = PHONE if size == "phone" else {"width": 1366, "height": 900}
    page = await _sign_in(browser, base_url, "olena", viewport=viewport)
    await page.goto(f"{base_url}/dashboard?kind=message&lang=en")
    await page.wait_for_selector('#live-status[data-connected="1"]')

    async def shown() -> list[str]:
        refs: list[str] = await page.locator("tr[data-lead]").evaluate_all(
            "rows => rows.map(r => r.dataset.lead)"
        )
        return refs

    async def go(rel: str, label: str) -> None:
        link = page.get_by_role("link", name=label)
        box = await link.bounding_box()
        assert box is not None and box["x"] + box["width"] <= viewport["width"], (rel, box)  # reachable
        await link.click()
        await page.wait_for_load_state()

    assert await shown() == ["L-1", "L-2", "L-3"]
    await go("next", "Next page ›")
    assert await shown() == ["L-4", "L-5", "L-6"]
    assert "kind=message" in page.url and "lang=en" in page.url
    assert await page.get_by_label("Kind").input_value() == "message"
    await go("next", "Next page ›")
    assert await shown() == ["L-7"]
    assert await page.get_by_role("link", name="Next page ›").count() == 0
    await page.wait_for_selector('#live-status[data-connected="1"]')
    # A new lead (due in 2 s: the last in due order) shows up live on the last page, in English.
    ref = await _submit_form(base_url)
    await page.wait_for_selector(f'tr[data-lead="{ref}"]')
    assert await shown() == ["L-7", ref]
    assert "Page 3: 2 of 8" in await page.locator(".pager-status").inner_text()
    scroll_width, inner_width = await page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert scroll_width == inner_width, (size, scroll_width)
    await _shot(page, f"queue-pages-{size}")
    await go("prev", "‹ Previous page")
    assert await shown() == ["L-4", "L-5", "L-6"]
    await go("prev", "‹ Previous page")
    assert await shown() == ["L-1", "L-2", "L-3"]
    assert "kind=message" in page.url and "lang=en" in page.url
    assert await page.get_by_role("link", name="‹ Previous page").count() == 0


async def test_the_lead_page_says_when_the_customer_writes_again_without_losing_a_draft(
    hub: Hub, browser: Any, base_url: str
) -> None:
    ref = await _submit_form(base_url)
    other = await _submit_form(base_url, name="Інший Клієнт", email="other@example.com")
    page = await _sign_in(browser, base_url, "olena")
    await page.goto(f"{base_url}/dashboard/leads/{ref}")
    await page.wait_for_selector('#live-status[data-connected="1"]')
    await page.get_by_label("Відповідь клієнтові").fill("Чернетка відповіді")
    # Another lead's news is not this page's business.
    await hub.actions.resolve(int(other[2:]), by="test")
    inbound = Inbound(
        channel="email",
        external_id="follow-up-1",
        sender=Identity(IdentityKind.EMAIL, "maria@example.com", "Марія"),
        text="І ще одне питання",
        received_at=utcnow(),
        thread=ThreadHints(lead_number=int(ref[2:])),
    )
    await hub.intake.accept(inbound)
    notice = page.locator("#lead-changed")
    await notice.wait_for()
    assert "Звернення змінилося" in await notice.inner_text()
    assert (
        await page.get_by_label("Відповідь клієнтові").input_value() == "Чернетка відповіді"
    )  # not reloaded
    await notice.get_by_role("link", name="Оновити сторінку").click()
    await page.locator(".msg-in", has_text="І ще одне питання").wait_for()


async def test_a_queue_whose_session_ended_goes_to_sign_in_instead_of_showing_it_in_the_table(
    hub: Hub, browser: Any, base_url: str
) -> None:
    page = await _sign_in(browser, base_url, "olena")
    await page.goto(f"{base_url}/dashboard?kind=message")
    await page.wait_for_selector('#live-status[data-connected="1"]')
    await page.context.clear_cookies()  # signed out elsewhere, or the session expired
    await _submit_form(base_url)  # the live refresh fetches the rows without a session
    await page.wait_for_url("**/dashboard/login?**")
    assert await page.locator("table.queue").count() == 0
    assert "next=%2Fdashboard%3Fkind%3Dmessage" in page.url  # back to the queue, not to a fragment
    async with aiohttp.ClientSession() as http:
        rows = await http.get(f"{base_url}/dashboard/queue/rows", allow_redirects=False)
        assert rows.status == 401


async def test_the_breaches_page_reloads_for_a_breach_not_for_a_warning_and_not_in_a_storm(
    hub: Hub, browser: Any, base_url: str
) -> None:
    ref = await _submit_form(base_url, name="Іван", email="ivan@example.com")
    lead = await hub.store.get_lead(int(ref[2:]))
    assert lead is not None
    page = await _sign_in(browser, base_url, "olena")
    await page.goto(f"{base_url}/dashboard/breaches")
    await page.wait_for_selector('#live-status[data-connected="1"]')
    loads: list[str] = []
    page.on("load", lambda _: loads.append(page.url))
    await page.evaluate("() => { window.sameLoad = true; }")
    await hub.bus.publish(Event(EventType.SLA_WARNING.value, utcnow(), lead.number, {}), lead)
    await page.wait_for_timeout(1500)
    assert await page.evaluate("() => window.sameLoad === true")  # a warning changes nothing here
    for _ in range(20):  # a storm of breaches: one reload, not twenty
        await hub.bus.publish(Event(EventType.SLA_BREACHED.value, utcnow(), lead.number, {}), lead)
    await page.wait_for_function("() => window.sameLoad === undefined")
    await page.wait_for_timeout(3000)
    assert len(loads) == 1, loads


async def test_live_updates_come_back_after_the_event_stream_was_refused(
    hub: Hub, browser: Any, base_url: str
) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="uk-UA")
    context.set_default_timeout(TIMEOUT_MS)
    refused: list[str] = []

    async def once_bad_gateway(route: Any) -> None:
        # A proxy's 502 while the hub restarts: EventSource gives up for good on a non-200.
        if not refused:
            refused.append(route.request.url)
            await route.fulfill(status=502, body="bad gateway")
        else:
            await route.continue_()

    await context.route("**/dashboard/events", once_bad_gateway)
    page = await context.new_page()
    await page.goto(f"{base_url}/dashboard/login")
    await page.get_by_label("Ідентифікатор менеджера").fill("olena")
    await page.get_by_label("Пароль").fill(PASSWORDS["olena"])
    await page.get_by_role("button", name="Увійти").click()
    await page.wait_for_url(f"{base_url}/dashboard")
    await page.wait_for_selector('#live-status[data-connected="1"]', timeout=20_000)
    assert refused
    ref = await _submit_form(base_url)
    await page.wait_for_selector(f'tr[data-lead="{ref}"]')


async def test_the_dashboard_pages_load_without_console_errors(hub: Hub, browser: Any, base_url: str) -> None:
    ref = await _submit_form(base_url)
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="uk-UA")
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on(
        "console",
        lambda message: message.type == "error" and errors.append(f"{message.text} {message.location}"),
    )
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
    # The first page a fresh browser opens is the sign-in page (it also asks for /favicon.ico).
    await page.goto(f"{base_url}/dashboard")
    await page.get_by_label("Ідентифікатор менеджера").fill("olena")
    await page.get_by_label("Пароль").fill(PASSWORDS["olena"])
    await page.get_by_role("button", name="Увійти").click()
    await page.wait_for_url(f"{base_url}/dashboard")
    for path in ("", f"/leads/{ref}", "/breaches", "/team", "/reports"):
        await page.goto(f"{base_url}/dashboard{path}")
        await page.wait_for_load_state("networkidle")
    assert errors == []


_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
_HTML = b"<html><body><script>document.title = 'RAN'</script>hi</body></html>"


async def test_a_customers_photo_opens_and_an_html_file_downloads_under_its_cyrillic_name(
    hub: Hub, browser: Any, base_url: str
) -> None:
    lead, _ = await _email_lead(
        hub, [("Фото котла.png", "image/png", _PNG), ("Звіт.html", "text/html", _HTML)]
    )
    page = await _sign_in(browser, base_url, "olena")
    await page.goto(f"{base_url}/dashboard/leads/{lead.ref}")
    async with page.context.expect_page() as opened:
        await page.get_by_role("link", name="Фото котла.png").click()
    photo = await opened.value
    await photo.wait_for_load_state()
    assert await photo.evaluate("() => document.images.length ? document.images[0].naturalWidth : 0") == 1
    await photo.close()
    async with page.expect_download() as started:
        await page.get_by_role("link", name="Звіт.html").click()
    download = await started.value
    assert download.suggested_filename == "Звіт.html"
    # The download opened no page of its own and ran nothing in the dashboard's.
    assert [p.url for p in page.context.pages] == [f"{base_url}/dashboard/leads/{lead.ref}"]
    assert await page.title() != "RAN"
