"""No secret ever reaches a log: a hub process with every secret set (API token, secret key,
metrics token, mail passwords, bot token, alert-webhook secret, a storage URL with a password)
goes through good and bad requests at DEBUG level, and its whole output is scanned for the
secrets."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from pathlib import Path

import aiohttp
import pytest

from hub.logs import RedactingFormatter, RedactSecrets
from tests.support.dashboard import csrf_from
from tests.support.process import HubProcess
from tests.support.settings import base_config


def _secret_env() -> dict[str, str]:
    return {
        "HUB_API_TOKEN": f"apitok-{secrets.token_hex(12)}",
        "HUB_SECRET_KEY": f"seckey-{secrets.token_hex(12)}",
        "HUB_METRICS_TOKEN": f"mettok-{secrets.token_hex(12)}",
        "HUB_IMAP_PASSWORD": f"imappw-{secrets.token_hex(8)}",
        "HUB_SMTP_PASSWORD": f"smtppw-{secrets.token_hex(8)}",
        "HUB_TELEGRAM_TOKEN": f"123456:tgtok-{secrets.token_hex(12)}",
        "HUB_TELEGRAM_WEBHOOK_SECRET": f"whsec-{secrets.token_hex(8)}",
    }


def _assert_clean(log: str, values: list[str]) -> None:
    leaked = [v for v in values if v in log]
    assert not leaked, f"secrets in the log: {leaked}\n{log[-3000:]}"


async def _raw_request(port: int, data: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        await asyncio.wait_for(reader.read(65536), timeout=5)
    finally:
        writer.close()


async def test_no_secret_reaches_the_log_of_a_running_hub(tmp_path: Path) -> None:
    env = _secret_env()
    # A webhook that is never called (no alert happens), so HUB_NOTIFY_WEBHOOK_SECRET applies too.
    env["HUB_NOTIFY_WEBHOOK_SECRET"] = f"ntfsec-{secrets.token_hex(8)}"
    config = {
        **base_config(tmp_path),
        "log_level": "DEBUG",
        "notify": {"webhook": {"url": "http://127.0.0.1:9/alerts"}},
    }
    config.pop("api")  # the token comes from HUB_API_TOKEN only
    hub = HubProcess(tmp_path, config, env=env)
    hub.start()
    try:
        await hub.wait_ready()
        token = env["HUB_API_TOKEN"]
        good = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"{hub.url}/forms/contact", json={"email": "a@example.com", "message": "hello"}
            )
            assert resp.status == 201
            lead = (await resp.json())["lead"]
            assert (await http.get(f"{hub.url}/api/v1/leads/{lead}", headers=good)).status == 200
            metrics = env["HUB_METRICS_TOKEN"]
            scrape = await http.get(f"{hub.url}/metrics", headers={"Authorization": f"Bearer {metrics}"})
            assert scrape.status == 200
            for wrong in (f"Bearer {metrics}x", f"Basic {metrics}", token):
                assert (await http.get(f"{hub.url}/metrics", headers={"Authorization": wrong})).status == 401
            assert (await http.get(f"{hub.url}/metrics?token={metrics}")).status == 401
            # Failed sign-ins log the manager id typed: here, secrets pasted into the wrong field.
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                csrf = csrf_from(await (await browser.get(f"{hub.url}/dashboard/login")).text())
                for typed in (metrics, env["HUB_NOTIFY_WEBHOOK_SECRET"], env["HUB_SECRET_KEY"]):
                    resp = await browser.post(
                        f"{hub.url}/dashboard/login",
                        data={"csrf": csrf, "username": typed, "password": token},
                    )
                    assert resp.status == 401
            failures = [
                ("GET", "/api/v1/leads", {"Authorization": f"Bearer {token}x"}, None),
                ("GET", "/api/v1/leads", {"Authorization": f"Bearer x{token}"}, None),
                ("GET", "/api/v1/leads", {"Authorization": f"Basic {token}"}, None),
                ("GET", f"/api/v1/leads?token={token}", {}, None),
                ("GET", f"/api/v1/leads/{token}", good, None),
                ("GET", f"/forms/{token}", {}, None),
                ("GET", f"/metrics/{metrics}", {}, None),
                ("POST", f"/api/v1/leads/{lead}/assign", good, {"manager": token}),
                (
                    "POST",
                    f"/api/v1/leads/{lead}/notes",
                    good,
                    {"text": env["HUB_SECRET_KEY"], "author": token},
                ),
                ("POST", "/api/v1/leads", good, {"external_id": token, "message": token}),
                ("POST", "/forms/contact", {"Idempotency-Key": token}, {"message": token}),
                ("GET", f"/api/v1/inbox?status={token}", good, None),
                ("POST", f"/api/v1/inbox/{token}/retry", good, None),
            ]
            for method, path, headers, body in failures:
                resp = await http.request(method, f"{hub.url}{path}", headers=headers, json=body)
                assert resp.status < 500, (method, path, resp.status)
            resp = await http.post(
                f"{hub.url}/api/v1/leads",
                data=b'{"message": "' + token.encode() + b"\xff" + b'"}',
                headers={**good, "Content-Type": "application/json"},
            )
            assert resp.status in (400, 422)
            resp = await http.post(
                f"{hub.url}/forms/contact",
                data=token.encode() * 40_000,
                headers={"Content-Type": "application/json"},
            )
            assert resp.status == 413
        # Malformed HTTP that aiohttp itself rejects (and logs at DEBUG).
        await _raw_request(hub.port, f"GET /{token} HTTP/1.1\r\nHost: x\r\nX-Bad\r\n\r\n".encode())
        await _raw_request(hub.port, f"{token} / HTTP/1.1\r\n\r\n".encode())
        await _raw_request(
            hub.port,
            f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: x\r\n\r\n".encode(),
        )
    finally:
        assert hub.stop() == 0
    log = hub.log()
    assert "DEBUG" in log and "hub " in log  # the log really was written, at DEBUG
    _assert_clean(log, list(env.values()))


@pytest.mark.parametrize("scheme", ["mongodb", "mongodb+srv"])
async def test_a_storage_url_password_never_reaches_the_log(tmp_path: Path, scheme: str) -> None:
    password = f"dbpw-{secrets.token_hex(10)}"
    env = {
        **_secret_env(),
        "HUB_STORAGE_URL": f"{scheme}://hub:{password}@127.0.0.1:9/hub?serverSelectionTimeoutMS=300",
    }
    hub = HubProcess(tmp_path, {**base_config(tmp_path), "log_level": "DEBUG"}, env=env)
    hub.start()
    assert hub.proc is not None
    hub.proc.wait(timeout=60)  # it cannot reach that database: it must stop, and say why
    log = hub.log()
    assert log.strip(), "the hub stopped without saying why"
    _assert_clean(log, [password, *(v for k, v in env.items() if k != "HUB_STORAGE_URL")])


def test_tracebacks_are_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    secret = f"tok-{secrets.token_hex(8)}"
    redact = RedactSecrets([secret])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s", redact))
    handler.addFilter(redact)
    log = logging.getLogger("tests.hostile.redact")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise RuntimeError(f"connect to mongodb://hub:{secret}x@db/hub failed with {secret}")
        except RuntimeError:
            log.exception("while opening %s", f"mongodb://u:{secret}@h/db")
        log.warning("stack", stack_info=True, extra={"token": secret})
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    assert "RuntimeError" in err and "***" in err
    assert secret not in err
