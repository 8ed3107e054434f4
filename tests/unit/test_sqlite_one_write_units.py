"""Units of one statement run without a savepoint: a failed one undoes itself only."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.domain import Contact, Identity, IdentityKind
from storage.sqlite import SqliteStore

T0 = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


async def test_a_failed_one_write_unit_keeps_the_other_units_of_its_transaction(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "hub.db")
    await store.open()
    try:
        async with store.deferred_commit():
            item, _ = await store.inbox_put("webform", "form:a", b"{}", T0)  # one write
            contact = Contact(
                id="c1",
                name="Олена",
                identities=[Identity(IdentityKind.EMAIL, "o@example.com")],
                created_at=T0,
            )
            await store.create_contact(contact)  # a unit of two statements, in a savepoint
            with pytest.raises(sqlite3.IntegrityError):
                # The lead counter exists already: this single statement fails and undoes itself.
                await store._write(
                    lambda conn: conn.execute("INSERT INTO counters (name, value) VALUES ('lead', 7)"),
                    one_write=True,
                )
            await store.inbox_done(item.id, None)  # one write, after the failure
    finally:
        await store.close()
    other = SqliteStore(tmp_path / "hub.db")
    await other.open()
    try:
        done = await other.inbox_get(item.id)
        assert done is not None and done.status == "done"
        assert await other.find_contact(Identity(IdentityKind.EMAIL, "o@example.com")) is not None
        assert await other.next_lead_number() == 1  # the failed insert left the counter alone
    finally:
        await other.close()


async def test_a_failed_commit_of_a_deferred_block_raises_once_and_leaves_no_error_unretrieved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from storage.base import StoreError

    store = SqliteStore(tmp_path / "hub.db")
    await store.open()
    joined: list[asyncio.Future[None]] = []
    join = store._join_commit

    def spy() -> asyncio.Future[None]:
        joined.append(join())
        return joined[-1]

    try:
        # Disk full at COMMIT: every unit the COMMIT covered fails with it.
        monkeypatch.setattr(store, "_join_commit", spy)
        monkeypatch.setattr(
            store, "_commit_in_thread", lambda conn: StoreError("SQLite hub.db: database or disk is full")
        )
        with pytest.raises(StoreError, match="disk is full"):
            async with store.deferred_commit():
                for n in range(5):
                    await store.inbox_put("webform", f"form:{n}", b"{}", T0)
    finally:
        await store.close()  # the disk is still full
    assert len(joined) == 5 and all(w.done() for w in joined)
    # Each one's error was retrieved ("Future exception was never retrieved" flooded the log).
    assert not [w for w in joined if w._log_traceback]  # type: ignore[attr-defined]


async def test_a_failed_write_is_unhealthy_until_a_write_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage.base import StoreError

    store = SqliteStore(tmp_path / "hub.db")
    await store.open()
    try:
        assert await store.ping()

        def disk_full(conn: sqlite3.Connection, savepoint: bool = True) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(store, "_begin_unit_in_thread", disk_full)
        with pytest.raises(StoreError, match="disk is full"):
            await store.inbox_put("webform", "form:a", b"{}", T0)
        # Reads still work, but a submission would fail: degraded, not ok.
        assert not await store.ping()
        monkeypatch.undo()
        await store.inbox_put("webform", "form:b", b"{}", T0)
        assert await store.ping()
    finally:
        await store.close()
