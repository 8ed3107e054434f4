"""Storage adapters behind the `Store` protocol (see `storage.base`)."""

from __future__ import annotations

from storage.base import DuplicateError, LeadChanges, LeadQuery, Store, StoreError

__all__ = ["DuplicateError", "LeadChanges", "LeadQuery", "Store", "StoreError", "store_from_url"]


def store_from_url(url: str) -> Store:
    """The adapter for a storage URL: `sqlite:///PATH` or `mongodb://...`."""
    if url.startswith("sqlite:///"):
        from storage.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from storage.mongo import MongoStore

        return MongoStore.from_url(url)
    raise StoreError(f"storage.url {url!r}: use sqlite:///PATH or mongodb://HOST/DB")
