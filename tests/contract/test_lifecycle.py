"""Store contract: opening, closing and health."""

from __future__ import annotations

import inspect
from pathlib import Path

from storage.base import Store
from tests.contract.conftest import StoreFactory


async def test_open_twice_close_twice_and_ping(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await store.open()  # a second open is harmless
    assert await store.ping() is True
    assert store.backend in ("sqlite", "mongo")
    await store.close()
    await store.close()  # safe to call twice


async def test_satisfies_the_protocol(store: Store) -> None:
    assert isinstance(store, Store)


async def test_data_survives_reopen(store_factory: StoreFactory) -> None:
    first = await store_factory()
    number = await first.next_lead_number()
    await first.set_state("k", {"v": 1})
    await first.close()
    second = await store_factory()
    assert await second.next_lead_number() == number + 1
    assert await second.get_state("k") == {"v": 1}


def test_every_store_method_is_exercised_by_this_suite() -> None:
    """A method added to the Store protocol must come with its contract tests."""
    methods = {name for name, _ in inspect.getmembers(Store, inspect.isfunction) if not name.startswith("_")}
    sources = "".join(p.read_text(encoding="utf-8") for p in Path(__file__).parent.glob("test_*.py"))
    missing = sorted(name for name in methods if f".{name}(" not in sources and f".{name}\n" not in sources)
    assert len(methods) > 40
    assert missing == []
