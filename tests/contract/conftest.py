"""Adapter fixtures for the Store contract suite.

Every test runs against each adapter: SQLite always (a real file in the test's temp dir), and
MongoDB when HUB_TEST_MONGODB_URL points at a server (each test in a fresh database, dropped
afterwards). `store_factory` opens more instances on the same database, which is how the suite
plays several hub processes racing for the same work.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from hub.domain import new_id
from storage import store_from_url
from storage.base import Store

MONGO_URL = os.environ.get("HUB_TEST_MONGODB_URL", "")

StoreFactory = Callable[[], Awaitable[Store]]


def mongo_url_for(database: str) -> str:
    """HUB_TEST_MONGODB_URL with its database path replaced (query options such as replicaSet kept)."""
    parts = urlsplit(MONGO_URL)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


ADAPTERS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "mongo",
        id="mongo",
        marks=pytest.mark.skipif(not MONGO_URL, reason="set HUB_TEST_MONGODB_URL to run the MongoDB leg"),
    ),
]


@pytest.fixture(params=ADAPTERS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The storage URL of a fresh database for this test (what HUB_STORAGE_URL would hold)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'contract.db'}"
    return mongo_url_for(f"hub_contract_{new_id()[:16]}")


@pytest.fixture
async def store_factory(store_url: str) -> AsyncIterator[StoreFactory]:
    """Opens store instances that all share the test's database; closes (and drops) it afterwards."""
    opened: list[Store] = []

    async def open_store() -> Store:
        store = store_from_url(store_url)
        await store.open()
        opened.append(store)
        return store

    try:
        yield open_store
    finally:
        for store in opened:
            await store.close()
        if store_url.startswith("mongodb"):
            await drop_mongo_database(store_url)


async def drop_mongo_database(url: str) -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url)
    try:
        await client.drop_database(client.get_default_database())
    finally:
        await client.close()


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    """One open store on a fresh database."""
    return await store_factory()
