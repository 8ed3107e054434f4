"""MongoDB adapter (PyMongo's AsyncMongoClient). Written in full by the storage work."""

from __future__ import annotations

from storage.base import StoreError


class MongoStore:
    """Placeholder until the MongoDB adapter lands: refuses to start with a clear message."""

    backend = "mongo"

    @classmethod
    def from_url(cls, url: str) -> MongoStore:
        raise StoreError("the MongoDB adapter is not available in this build; use sqlite:///PATH")
