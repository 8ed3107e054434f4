"""Shared fixtures: settings on a throwaway SQLite file, an in-process hub on a free port."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from hub.config import Settings
from tests.support.settings import API_TOKEN, make_settings

IN_CI = os.environ.get("CI") == "true"


def require_server(available: bool, what: str) -> None:
    """Skip when a real server is missing locally; fail in CI, where the suite must install it."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI (CI=true) but is not available")
    pytest.skip(f"{what} is not available on this machine")


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        return make_settings(tmp_path, **overrides)

    return build


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@pytest.fixture
async def make_hub(settings_factory: Callable[..., Settings]) -> AsyncIterator[Callable[..., Awaitable[Hub]]]:
    """Builds hubs on the test's settings (overrides as keywords) with their store open and
    nothing started; hubs built twice share the test's SQLite file. Closed after the test."""
    hubs: list[Hub] = []

    async def build(**overrides: Any) -> Hub:
        instance = Hub(settings_factory(**overrides))
        await instance.store.open()
        hubs.append(instance)
        return instance

    yield build
    for instance in hubs:
        await instance.store.close()


@pytest.fixture
async def hub(settings: Settings) -> AsyncIterator[Hub]:
    """A started hub (web on a free port) on the test's settings."""
    instance = Hub(settings)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def base_url(hub: Hub) -> str:
    return f"http://127.0.0.1:{hub.web_port}"


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}"}
