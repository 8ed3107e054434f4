"""`sqlite:///PATH?busy_timeout=...`: how long a write waits for another process's lock."""

from __future__ import annotations

import pytest

from storage.base import StoreError
from storage.sqlite import SqliteStore


def test_busy_timeout_option() -> None:
    assert SqliteStore.from_url("sqlite:////tmp/x/hub.db?busy_timeout=1s")._busy_timeout_ms == 1000
    assert SqliteStore.from_url("sqlite:////tmp/x/hub.db?busy_timeout=90s")._busy_timeout_ms == 90_000
    store = SqliteStore.from_url("sqlite:////tmp/x/hub.db")
    assert store._busy_timeout_ms == 10_000
    assert str(store.path) == "/tmp/x/hub.db"


@pytest.mark.parametrize(
    "url",
    ["sqlite:////tmp/x.db?busy=1s", "sqlite:////tmp/x.db?busy_timeout=soon", "sqlite:///?busy_timeout=1s"],
)
def test_bad_options_are_refused_by_name(url: str) -> None:
    with pytest.raises(StoreError, match=r"busy|no file path"):
        SqliteStore.from_url(url)
