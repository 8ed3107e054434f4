"""Email fixtures: one private Dovecot for the session, a fresh mailbox and SMTP server per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from hub.config import Settings
from tests.conftest import require_server
from tests.support.dovecot import DovecotServer, ImapAccount, ImapClient, dovecot_available
from tests.support.smtp import SmtpServer


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """A private Dovecot on 127.0.0.1 (fails under CI=true when dovecot-imapd is missing)."""
    require_server(dovecot_available(), "Dovecot IMAP server (Debian package dovecot-imapd)")
    server = DovecotServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def imap_account(dovecot: DovecotServer) -> ImapAccount:
    return dovecot.account


@pytest.fixture
async def mailbox(imap_account: ImapAccount) -> AsyncIterator[str]:
    """A fresh, empty mailbox for this test (tests never see each other's mail)."""
    name = f"T{uuid.uuid4().hex[:10]}"
    async with ImapClient(imap_account) as client:
        await client.create(name)
    yield name


@pytest.fixture
async def imap(imap_account: ImapAccount) -> AsyncIterator[ImapClient]:
    async with ImapClient(imap_account) as client:
        yield client


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def email_config(
    account: ImapAccount, mailbox: str, smtp_port: int, tmp_path: Path, **overrides: Any
) -> dict[str, Any]:
    """The `email:` section for a hub that reads `mailbox` and sends to the test SMTP server."""
    config: dict[str, Any] = {
        "enabled": True,
        "imap": {
            "host": account.host,
            "port": account.port,
            "security": "plain",
            "username": account.username,
            "password": account.password,
            "mailbox": mailbox,
            "poll_every": "1s",
            "timeout": "10s",
            "reconnect_max": "2s",
        },
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "plain",
            "username": None,
            "from": "Support <support@example.com>",
            "timeout": "5s",
        },
        "attachments_dir": str(tmp_path / "attachments"),
        "lease_ttl": "6s",
        "kinds": {"service@": "service_request", "+repair": "service_request", "ремонт": "service_request"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture
def email_settings(
    settings_factory: Callable[..., Settings],
    imap_account: ImapAccount,
    mailbox: str,
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> Settings:
    return settings_factory(email=email_config(imap_account, mailbox, smtp_server.port, tmp_path))


@pytest.fixture
async def email_hub(email_settings: Settings) -> AsyncIterator[Hub]:
    """A started hub whose email channel polls the test mailbox."""
    instance = Hub(email_settings)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()
