"""Several hub processes may start on one new SQLite file at the same moment."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from hub.domain import Identity, IdentityKind
from hub.identities import normalize_phone
from storage.base import PHONE_RENORMALIZED_KEY
from storage.sqlite import CACHE_KIB, WAL_CHECKPOINT_PAGES, SqliteStore
from tests.contract.builders import message


async def test_concurrent_opens_of_a_new_file_all_succeed(tmp_path: Path) -> None:
    for round_ in range(10):
        path = tmp_path / f"new-{round_}.db"
        stores = [SqliteStore(path) for _ in range(4)]
        await asyncio.gather(*(store.open() for store in stores))
        try:
            assert all([await store.ping() for store in stores])
        finally:
            await asyncio.gather(*(store.close() for store in stores))


async def test_opening_an_older_file_drops_the_indexes_others_now_cover(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:  # what a file from before 2026-12-02 carries
        conn.execute("CREATE INDEX leads_assignee_status ON leads (assignee, status)")
        conn.execute("CREATE INDEX leads_created ON leads (created_at)")
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "leads_assignee_status" not in names
    assert "leads_created" not in names
    assert {"leads_assignee_load", "leads_report"} <= names


async def test_the_connection_gets_a_large_page_cache_and_rare_checkpoints(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "tuned.db")
    await store.open()
    try:
        conn = store._conn
        async with conn.execute("PRAGMA cache_size") as cursor:
            assert (await cursor.fetchone())[0] == -CACHE_KIB  # type: ignore[index]
        async with conn.execute("PRAGMA wal_autocheckpoint") as cursor:
            assert (await cursor.fetchone())[0] == WAL_CHECKPOINT_PAGES  # type: ignore[index]
    finally:
        await store.close()


async def test_opening_a_file_whose_messages_have_no_subject_adds_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the messages table of a file from before 2026-12-02
        conn.execute(
            "CREATE TABLE messages (id TEXT PRIMARY KEY, lead_number INTEGER NOT NULL, "
            "direction TEXT NOT NULL, channel TEXT NOT NULL, author TEXT NOT NULL, text TEXT NOT NULL, "
            "html TEXT NOT NULL DEFAULT '', attachments TEXT NOT NULL DEFAULT '[]', external_id TEXT, "
            "refs TEXT NOT NULL DEFAULT '[]', delivery TEXT, created_at REAL NOT NULL, "
            "seq INTEGER NOT NULL, UNIQUE (channel, external_id))"
        )
        conn.execute(
            "INSERT INTO messages (id, lead_number, direction, channel, author, text, created_at, seq) "
            "VALUES ('m-old', 1, 'in', 'web', 'Олена', 'старе', 0, 1)"
        )
    store = SqliteStore(path)
    await store.open()
    try:
        (old,) = await store.list_messages(1)
        assert (old.text, old.subject) == ("старе", "")
        await store.add_message(message(1, external_id="web:new", text="нове", subject="Друга тема"))
        assert [(m.text, m.subject) for m in await store.list_messages(1)] == [
            ("старе", ""),
            ("нове", "Друга тема"),
        ]
    finally:
        await store.close()


async def test_a_customer_stored_with_an_old_form_phone_is_found_again_after_the_upgrade(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:  # a file the code before 2026-12-02 wrote
        conn.execute("DELETE FROM kv WHERE key = ?", (PHONE_RENORMALIZED_KEY,))
        conn.execute("INSERT INTO contacts (id, name, created_at) VALUES ('c-old', 'Петро', 0)")
        conn.execute(
            "INSERT INTO identities (kind, value, contact_id) VALUES ('phone', '+0671234567', 'c-old')"
        )
    store = SqliteStore(path)
    await store.open()
    try:
        typed = normalize_phone("067 123 45 67")
        assert typed == "+380671234567"
        found = await store.find_contact(Identity(IdentityKind.PHONE, typed))
        assert found is not None and found.id == "c-old"
    finally:
        await store.close()
