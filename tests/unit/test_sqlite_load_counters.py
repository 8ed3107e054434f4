"""SQLite keeps per-manager loads in a trigger-maintained table; older files get it on open."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hub.domain import Lead, LeadKind, LeadStatus
from storage.base import LeadChanges
from storage.sqlite import SqliteStore

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def _lead(number: int, assignee: str | None, priority: int = 0) -> Lead:
    return Lead(
        number=number,
        kind=LeadKind.MESSAGE,
        channel="webform",
        contact_id=f"c{number}",
        status=LeadStatus.NEW,
        created_at=T0,
        updated_at=T0,
        origin_external_id=f"e{number}",
        first_response_due=T0 + timedelta(hours=4),
        assignee=assignee,
        priority=priority,
    )


async def test_a_file_from_before_the_counters_is_counted_once_on_open(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    store = SqliteStore(path)
    await store.open()
    await store.create_lead(_lead(1, "m1", priority=2))
    await store.create_lead(_lead(2, "m1"))
    await store.create_lead(_lead(3, "m2"))
    await store.update_lead(3, LeadChanges(status=LeadStatus.CLOSED, updated_at=T0))
    await store.close()
    # What an older version left behind: leads, but no counters and no triggers.
    with sqlite3.connect(path) as raw:
        for name in ("leads_load_insert", "leads_load_delete", "leads_load_update"):
            raw.execute(f"DROP TRIGGER {name}")
        raw.execute("DROP TABLE assignee_load")
    reopened = SqliteStore(path)
    await reopened.open()
    try:
        assert await reopened.load_by_assignee(["m1", "m2"]) == {"m1": (2, 4), "m2": (0, 0)}
        await reopened.create_lead(_lead(4, "m2"))  # and the triggers are back
        assert await reopened.load_by_assignee(["m2"]) == {"m2": (1, 1)}
    finally:
        await reopened.close()
    again = SqliteStore(path)
    await again.open()  # an up-to-date file is not counted twice
    try:
        assert await again.load_by_assignee(["m1", "m2"]) == {"m1": (2, 4), "m2": (1, 1)}
    finally:
        await again.close()
