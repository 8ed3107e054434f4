"""The outbox dispatcher: retries transient failures, gives up once on permanent ones, never sends twice."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from hub import i18n
from hub.app import Hub
from hub.delivery_failures import DELIVERY_FAILURES, failure_text
from hub.domain import Contact, Identity, IdentityKind, Inbound, Lead, OutboxItem
from hub.errors import PermanentError, TransientError, UncertainDelivery
from hub.outbox import backoff_delay

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


class ScriptedSender:
    """Fails as scripted, then succeeds; records every successful delivery."""

    channel = "email"

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.delivered: list[str] = []

    async def send(self, item: OutboxItem, lead: Lead, contact: Contact | None) -> str:
        if self.failures:
            raise self.failures.pop(0)
        self.delivered.append(item.id)
        return f"<{item.id}@test>"


@pytest.fixture
async def core(make_hub: Callable[..., Awaitable[Hub]]) -> Hub:
    return await make_hub(web={"enabled": False}, outbox={"max_attempts": 3})


async def _lead_with_reply(hub: Hub) -> str:
    result = await hub.intake.accept(
        Inbound("email", "m1", Identity(IdentityKind.EMAIL, "c@example.com"), "help", T0), now=T0
    )
    message = await hub.replies.record_reply(result.lead.number, "answer", "olena", now=T0)
    return message.id


async def test_transient_failures_retry_then_deliver_once(core: Hub) -> None:
    sender = ScriptedSender([TransientError("421 try later"), OSError("connection refused")])
    core.outbox.register(sender)
    message_id = await _lead_with_reply(core)
    when = datetime.now(UTC)
    for _ in range(5):
        await core.outbox.dispatch_once(now=when)
        when += timedelta(minutes=10)
    assert len(sender.delivered) == 1
    message = await core.store.get_message(message_id)
    assert message is not None and message.delivery is not None and message.delivery.value == "sent"
    assert (await core.store.outbox_counts())["sent"] == 1


async def test_permanent_failure_is_reported_once(core: Hub) -> None:
    sender = ScriptedSender([PermanentError("550 no such user")])
    core.outbox.register(sender)
    message_id = await _lead_with_reply(core)
    for _ in range(3):
        await core.outbox.dispatch_once(now=datetime.now(UTC) + timedelta(hours=1))
    assert sender.delivered == []
    message = await core.store.get_message(message_id)
    assert message is not None and message.delivery is not None and message.delivery.value == "failed"
    failures = await core.store.list_events(types=["delivery.failed"])
    assert len(failures) == 1 and "550" in failures[0].data["error"]


async def test_gives_up_after_max_attempts(core: Hub) -> None:
    sender = ScriptedSender([TransientError("down")] * 10)
    core.outbox.register(sender)
    await _lead_with_reply(core)
    when = datetime.now(UTC)
    for _ in range(6):
        await core.outbox.dispatch_once(now=when)
        when += timedelta(hours=1)
    assert sender.delivered == []
    assert (await core.store.outbox_counts())["failed"] == 1
    assert len(await core.store.list_events(types=["delivery.failed"])) == 1


def test_backoff_grows_and_is_capped() -> None:
    base, cap = timedelta(seconds=5), timedelta(minutes=30)
    delays = [backoff_delay(n, base, cap).total_seconds() for n in range(1, 15)]
    assert all(2.5 <= d <= 1800 for d in delays)
    assert backoff_delay(1, base, cap).total_seconds() <= 5
    rng = random.Random(7)
    late = sorted(backoff_delay(12, base, cap, rng).total_seconds() for _ in range(101))
    assert late[50] > 300  # the median grows with the attempt number: jitter spreads retries out


class BrokenOnceSender(ScriptedSender):
    """Raises a non-delivery error (a sender bug) for the first row it sees."""

    def __init__(self) -> None:
        super().__init__([])
        self.broken: str | None = None

    async def send(self, item: OutboxItem, lead: Lead, contact: Contact | None) -> str:
        if self.broken in (None, item.id):
            self.broken = item.id
            raise ValueError("invalid arguments; address parts cannot contain CR or LF")
        return await super().send(item, lead, contact)


async def test_a_sender_bug_fails_its_row_and_the_loop_delivers_the_others(core: Hub) -> None:
    sender = BrokenOnceSender()
    core.outbox.register(sender)
    first = await _lead_with_reply(core)
    second = await _lead_with_reply(core)
    await core.outbox.start()
    try:
        core.outbox.wake()
        for _ in range(100):
            if sender.delivered:
                break
            await asyncio.sleep(0.02)
    finally:
        await core.outbox.stop()  # re-raised the sender's error before the fix
    assert len(sender.delivered) == 1
    states = []
    for message_id in (first, second):
        message = await core.store.get_message(message_id)
        assert message is not None and message.delivery is not None
        states.append(message.delivery.value)
    assert sorted(states) == ["failed", "sent"]
    failures = await core.store.list_events(types=["delivery.failed"])
    assert len(failures) == 1 and "ValueError" in failures[0].data["error"]


@pytest.mark.parametrize(
    ("failures", "reason"),
    [
        ([PermanentError("550 5.1.1 no such user", code="recipient_refused")], "recipient_refused"),
        ([PermanentError("Forbidden: bot was blocked by the user", code="unreachable")], "unreachable"),
        ([PermanentError("something new", code="not a delivery code")], "failed"),
        ([TransientError("421 try later", code="unreachable")] * 10, "gave_up"),
        ([UncertainDelivery("dropped after DATA")] * 3, "maybe_sent"),
        ([ValueError("a sender bug")], "failed"),
    ],
)
async def test_a_failed_delivery_names_a_reason_staff_can_read(
    core: Hub, failures: list[Exception], reason: str
) -> None:
    """Staff read the reason's text in their language; the channel's words stay in `error`."""
    words = str(failures[0])
    core.outbox.register(ScriptedSender(failures))
    await _lead_with_reply(core)
    when = datetime.now(UTC)
    for _ in range(6):
        await core.outbox.dispatch_once(now=when)
        when += timedelta(hours=1)
    events = await core.store.list_events(types=["delivery.failed"])
    assert len(events) == 1 and events[0].data["reason"] == reason
    assert words in events[0].data["error"]


def test_every_delivery_failure_reads_in_both_languages() -> None:
    for code in DELIVERY_FAILURES:
        texts = {language: failure_text(code, language) for language in i18n.SUPPORTED}
        assert all(t and not t.startswith("delivery.") and t.endswith(".") for t in texts.values()), code
        assert texts["uk"] != texts["en"], code
        assert not re.search(r"[A-Za-z]{3}", texts["uk"].replace("Telegram", "").replace("email", "")), texts
    assert failure_text("no such code", "uk") == failure_text("failed", "uk")
