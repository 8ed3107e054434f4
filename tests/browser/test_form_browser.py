"""A person on a phone fills the web form in Chromium and sees the thank-you page with the lead number."""

from __future__ import annotations

from typing import Any

from hub.app import Hub
from tests.browser.conftest import screenshot_path


async def test_form_submission_in_a_real_browser(hub: Hub, base_url: str, browser: Any) -> None:
    context = await browser.new_context(
        viewport={"width": 390, "height": 844}, locale="uk-UA", extra_http_headers={"Accept-Language": "uk"}
    )
    page = await context.new_page()
    await page.goto(f"{base_url}/forms/contact")
    assert await page.locator("h1").inner_text() == "Напишіть нам"
    await page.screenshot(path=str(screenshot_path("form-contact-phone")), full_page=True)

    await page.get_by_label("Ім'я").fill("Олена Коваль")
    await page.get_by_label("Електронна пошта").fill("olena@example.com")
    await page.get_by_label("Повідомлення").fill("Добрий день! Потрібна консультація щодо <b>замовлення</b>.")
    await page.get_by_role("button", name="Надіслати").click()

    lead = page.locator("[data-lead]")
    await lead.wait_for(timeout=10_000)
    assert await lead.inner_text() == "L-1"
    await page.screenshot(path=str(screenshot_path("form-thanks-phone")), full_page=True)

    stored = await hub.store.list_messages(1)
    assert [m.text for m in stored] == ["Добрий день! Потрібна консультація щодо <b>замовлення</b>."]
    await context.close()


async def test_form_validation_errors_are_shown_and_nothing_is_stored(
    hub: Hub, base_url: str, browser: Any
) -> None:
    context = await browser.new_context(locale="en-US", extra_http_headers={"Accept-Language": "en"})
    page = await context.new_page()
    await page.goto(f"{base_url}/forms/service")
    await page.get_by_label("Email").fill("not-an-address")
    await page.get_by_role("button", name="Send").click()
    await page.locator(".summary").wait_for(timeout=10_000)
    assert "does not look like an email" in await page.locator("#e-email").inner_text()
    assert "write a message" in await page.locator("#e-message").inner_text()
    assert await page.get_by_label("Email").input_value() == "not-an-address"
    await page.screenshot(path=str(screenshot_path("form-errors")), full_page=True)
    assert await hub.store.get_lead(1) is None
    await context.close()
