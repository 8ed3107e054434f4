"""SQLite reads every page of the queue's due order along an index, never a sort of all matches.

Each statement `list_leads` sends is recorded and explained with EXPLAIN QUERY PLAN: a page of
1M leads must cost O(page), so no `USE TEMP B-TREE FOR ORDER BY` over a table scan, and the
owed part must come from the partial index leads_owed_sla_due.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hub.domain import ACTIVE_STATUSES, Lead, LeadKind, LeadStatus
from storage.base import LeadQuery
from storage.sqlite import SqliteStore

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
ACTIVE = tuple(sorted(ACTIVE_STATUSES))


def _lead(number: int) -> Lead:
    answered = number % 3 == 0
    status = (LeadStatus.NEW, LeadStatus.OPEN, LeadStatus.RESOLVED, LeadStatus.CLOSED)[number % 4]
    due = T0 + timedelta(hours=number % 5)
    owed = status in ACTIVE_STATUSES and (not answered or number % 2 == 0)
    return Lead(
        number=number,
        kind=LeadKind.MESSAGE,
        channel="webform",
        contact_id=f"c{number}",
        status=status,
        created_at=T0,
        updated_at=T0 + timedelta(minutes=number % 7),
        origin_external_id=f"e{number}",
        first_response_due=due,
        first_response_at=T0 if answered else None,
        # Owed: a first response, or (answered, the customer wrote again) a next one.
        sla_target=None if not owed else "next_response" if answered else "first_response",
        sla_due=due + timedelta(minutes=number % 11) if owed else None,
        assignee="olena" if number % 2 else None,
        team="support",
    )


def _plan(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> str:
    return "\n".join(str(row[3]) for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))


@pytest.mark.parametrize(
    "query",
    [
        LeadQuery(statuses=ACTIVE, order="due"),
        LeadQuery(order="due"),
        LeadQuery(statuses=ACTIVE, assignee="olena", or_unassigned=True, order="due"),
        LeadQuery(statuses=ACTIVE, breached=True, order="due"),
        LeadQuery(statuses=(LeadStatus.RESOLVED, LeadStatus.CLOSED), team="support", order="due"),
    ],
)
async def test_every_due_order_page_is_read_along_an_index(tmp_path: Path, query: LeadQuery) -> None:
    path = tmp_path / "hub.db"
    store = SqliteStore(path)
    await store.open()
    try:
        async with store.deferred_commit():
            for number in range(1, 200):
                await store.create_lead(_lead(number))
        sent: list[tuple[str, tuple[Any, ...]]] = []
        read = store._read

        async def recording(sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
            sent.append((sql, tuple(params)))
            return await read(sql, params)

        store._read = recording  # type: ignore[method-assign]
        first = await store.list_leads(query, 5)
        cursors = [c for c in (first.next_cursor,) if c]
        if cursors:
            later = await store.list_leads(query, 5, cursors[0])
            cursors += [c for c in (later.next_cursor, later.prev_cursor) if c]
            for cursor in cursors[1:]:
                await store.list_leads(query, 5, cursor)
    finally:
        await store.close()
    assert any("ORDER BY sla_due" in sql for sql, _ in sent) or (
        query.statuses is not None and not set(query.statuses) & ACTIVE_STATUSES
    )
    db = sqlite3.connect(path)
    try:
        for sql, params in sent:
            plan = _plan(db, sql, params)
            assert "SCAN leads" not in plan, (sql, plan)
            if "ORDER BY sla_due" in sql:
                assert "USING INDEX leads_owed_sla_due" in plan, plan
                assert "TEMP B-TREE" not in plan, plan
            else:
                assert "USING INDEX leads_status_updated" in plan, plan
                # Each status's range is read in index order; only the page each one gave
                # (a subquery's rows, at most `limit`) is sorted for the merge.
                lines = plan.splitlines()
                for before, line in itertools.pairwise(lines):
                    if "TEMP B-TREE" in line:
                        assert before.startswith("SCAN (subquery"), plan
    finally:
        db.close()


async def test_an_existing_file_gets_the_running_target_index_and_its_legacy_leads_are_owed(
    tmp_path: Path,
) -> None:
    """A file from before: the first-response index leads_owed_due, and an active lead of the
    time before the generalised clock (first_response_* only). Opened, it has leads_owed_sla_due
    in its place and that lead is in the queue's owed part by its first-response due time."""
    path = tmp_path / "hub.db"
    store = SqliteStore(path)
    await store.open()
    try:
        for number in (1, 2):
            await store.create_lead(_lead(number))
        await store.create_lead(replace(_lead(4), first_response_due=T0 + timedelta(hours=9)))
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        db.execute("DROP INDEX leads_owed_sla_due")
        db.execute(
            "CREATE INDEX leads_owed_due ON leads (first_response_due, number) WHERE status IN "
            "('new','open','waiting_customer') AND first_response_at IS NULL AND first_response_due IS NOT NULL"
        )
        db.execute("DELETE FROM kv WHERE key = 'storage.legacy_first_response_target'")
        db.execute(
            "UPDATE leads SET sla_target = NULL, sla_started_at = NULL, sla_due = NULL, sla_warn_due = NULL "
            "WHERE number = 4"
        )
        db.commit()
    finally:
        db.close()
    reopened = SqliteStore(path)
    await reopened.open()
    try:
        page = await reopened.list_leads(LeadQuery(statuses=ACTIVE, order="due"), 10)
        legacy = next(lead for lead in page.items if lead.number == 4)
        assert legacy.sla_target == "first_response" and legacy.sla_due == T0 + timedelta(hours=9)
        assert [lead.number for lead in page.items][-1] == 4  # the latest due of the owed ones
    finally:
        await reopened.close()
    db = sqlite3.connect(path)
    try:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        db.close()
    assert "leads_owed_sla_due" in names and "leads_owed_due" not in names
