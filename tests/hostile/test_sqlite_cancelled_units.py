"""A write unit whose caller is cancelled (a request dropped, a channel stopping) is all or
nothing, and units that completed alongside it are still committed and reported."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path

from hub.domain import Contact, Identity, IdentityKind
from storage.sqlite import SqliteStore


async def test_cancelled_units_are_all_or_nothing_under_concurrency(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "hub.db")
    await store.open()
    rng = random.Random(3)
    now = datetime(2026, 11, 23, tzinfo=UTC)
    try:
        tasks: list[asyncio.Task[object]] = []
        for i in range(300):
            contact = Contact(
                id=f"c{i}",
                name=f"C {i}",
                identities=[
                    Identity(IdentityKind.EMAIL, f"c{i}@example.com"),
                    Identity(IdentityKind.PHONE, f"+3806712{i:05d}"),
                ],
                created_at=now,
            )
            tasks.append(asyncio.create_task(store.create_contact(contact)))
            if rng.random() < 0.5:
                for _ in range(rng.randint(0, 4)):
                    await asyncio.sleep(0)
                tasks[rng.randrange(len(tasks))].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        completed = {f"c{i}" for i, r in enumerate(results) if isinstance(r, Contact)}
        for i in range(300):
            contact = await store.get_contact(f"c{i}")
            by_email = await store.find_contact(Identity(IdentityKind.EMAIL, f"c{i}@example.com"))
            by_phone = await store.find_contact(Identity(IdentityKind.PHONE, f"+3806712{i:05d}"))
            if contact is None:
                assert by_email is None and by_phone is None, f"c{i}: identities without their contact"
                assert f"c{i}" not in completed
            else:
                assert len(contact.identities) == 2, f"c{i}: half a unit was committed"
        assert completed, "no unit completed at all"
        # The store still works, and what was reported committed survives a reopen.
        await asyncio.wait_for(store.set_state("after", 1), timeout=5)
        await store.close()
        await store.open()
        for contact_id in completed:
            assert await store.get_contact(contact_id) is not None, contact_id
        assert await store.get_state("after") == 1
    finally:
        await store.close()
