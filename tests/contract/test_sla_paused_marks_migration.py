"""Store contract: resolution marks an old pause unset though already due are armed again once.

Before a pause kept passed resolution marks, a reply unset them: a lead paused then never
reported the warning or breach it had already earned. Opening such a database restores every
mark that fell due while the clock ran, was never claimed (no mark, no claim event) and belongs
to an active lead; the next sweep reports it once.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from pymongo import AsyncMongoClient

from hub.domain import LeadStatus
from storage.base import LeadChanges, Store
from tests.contract.conftest import StoreFactory
from tests.contract.test_sla_store import T0, lead

KEY = "storage.paused_resolution_marks"


def reply(at: datetime) -> LeadChanges:
    return LeadChanges(
        status=LeadStatus.WAITING_CUSTOMER,
        clear_sla=True,
        pause_sla=True,
        first_response_at=at,
        updated_at=at,
    )


async def as_the_old_code_left_it(store_url: str, unset: dict[int, tuple[str, ...]]) -> None:
    """Unset these fields of these leads and forget the migration, as an older hub left the file."""
    if store_url.startswith("sqlite:///"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as db:
            for number, fields in unset.items():
                db.execute(
                    f"UPDATE leads SET {', '.join(f'{f} = NULL' for f in fields)} WHERE number = ?", (number,)
                )
            db.execute("DELETE FROM kv WHERE key = ?", (KEY,))
        return
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(store_url)
    try:
        db = client.get_default_database()
        for number, fields in unset.items():
            await db["leads"].update_one({"_id": number}, {"$set": dict.fromkeys(fields)})
        await db["kv"].delete_one({"_id": KEY})
    finally:
        await client.close()


async def test_opening_an_older_database_arms_the_resolution_marks_a_pause_lost(
    store_factory: StoreFactory, store_url: str
) -> None:
    a: Store = await store_factory()
    res = {"resolution_due": T0 + timedelta(hours=1), "resolution_warn_due": T0 + timedelta(minutes=50)}
    # Lead 3's resolution breach and warning were reported before its pause.
    await a.create_lead(lead(3, timedelta(hours=5), **res))
    claimed = await a.claim_sla_marks(T0 + timedelta(hours=1, minutes=30), 100)
    assert {(c.lead.number, c.target) for c in claimed} == {(3, "resolution")}
    # Lead 1 paused after both resolution marks, lead 2 between them, lead 4 too but resolved.
    await a.create_lead(lead(1, timedelta(hours=5), **res))
    await a.create_lead(lead(2, timedelta(hours=5), **{**res, "resolution_due": T0 + timedelta(hours=5)}))
    await a.create_lead(lead(4, timedelta(hours=5), **res))
    for number in (1, 2, 3, 4):
        await a.update_lead(number, reply(T0 + timedelta(hours=2)))
    await a.update_lead(4, LeadChanges(status=LeadStatus.RESOLVED, resolved_at=T0 + timedelta(hours=3)))
    pending = ("res_breach_pending_at", "res_warn_pending_at")
    # The old pause unset them all; lead 3's episode marks were never backfilled (it was paused).
    await as_the_old_code_left_it(
        store_url, {1: pending, 2: pending, 3: (*pending, "res_breached_at", "res_warned_at"), 4: pending}
    )

    upgraded = await store_factory()
    claims = await upgraded.claim_sla_marks(T0 + timedelta(hours=3), 100)
    assert sorted((c.lead.number, c.target, c.level, c.due) for c in claims) == [
        (1, "resolution", "breach", T0 + timedelta(hours=1)),
        (1, "resolution", "warning", T0 + timedelta(minutes=50)),
        (2, "resolution", "warning", T0 + timedelta(minutes=50)),
    ]
    # Once: another open restores nothing, and the marks are claimed.
    again = await store_factory()
    assert await again.claim_sla_marks(T0 + timedelta(days=3), 100) == []
