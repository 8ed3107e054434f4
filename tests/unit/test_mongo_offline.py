"""The MongoDB adapter's behaviour when no server answers (the only MongoDB this machine has)."""

from __future__ import annotations

import socket

import pytest

from storage import StoreError, store_from_url
from storage.mongo import MongoStore


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_store_from_url_picks_the_mongo_adapter() -> None:
    store = store_from_url("mongodb://db1:27017,db2:27017/crm?replicaSet=rs0&w=majority")
    assert isinstance(store, MongoStore)
    assert store.backend == "mongo"


async def test_unreachable_server_is_a_store_error_not_a_driver_error() -> None:
    store = store_from_url(f"mongodb://127.0.0.1:{closed_port()}/hub?serverSelectionTimeoutMS=200")
    with pytest.raises(StoreError, match="open"):
        await store.open()
    assert await store.ping() is False
    with pytest.raises(StoreError, match="not open"):
        await store.get_lead(1)
    await store.close()
    await store.close()
