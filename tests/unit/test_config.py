"""Configuration: the shipped config.yaml is valid, errors name the key, env overrides secrets."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from hub.config import ConfigError, load_settings, masked_dump, parse_duration, settings_from_dict

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("4h", timedelta(hours=4)),
        ("2d", timedelta(days=2)),
        (30, timedelta(seconds=30)),
    ],
)
def test_durations(text: str | int, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["4x", "", "-1h", "0s", "h", True])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_shipped_config_is_valid_and_matches_the_defaults() -> None:
    settings = load_settings(ROOT / "config.yaml", env={})
    assert settings.storage.url == "sqlite:///data/hub.db"
    assert (settings.web.host, settings.web.port) == ("127.0.0.1", 8080)
    assert set(settings.forms) == {"contact", "service"}
    assert settings.sla.policies["message"].first_response == timedelta(hours=4)
    assert settings.sla.policies["service_request"].first_response == timedelta(hours=12)
    assert not settings.email.enabled and not settings.telegram.enabled
    assert len(settings.teams) >= 2 and len(settings.managers) >= 2


def test_env_overrides_secrets_and_urls() -> None:
    env = {"HUB_STORAGE_URL": "sqlite:////tmp/x.db", "HUB_WEB_PORT": "9999", "HUB_API_TOKEN": "t0ken-value"}
    settings = load_settings(ROOT / "config.yaml", env=env)
    assert settings.storage.url == "sqlite:////tmp/x.db"
    assert settings.web.port == 9999
    assert settings.api.token is not None and settings.api.token.get_secret_value() == "t0ken-value"
    dumped = masked_dump(settings)
    assert dumped["api"]["token"] == "***"
    assert "t0ken-value" not in str(dumped)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"sla": {"check_every": "often"}}, "sla.check_every"),
        ({"sla": {"policies": {"message": {"first_response": "4x"}}}}, "sla.policies.message.first_response"),
        ({"web": {"port": 70000}}, "web.port"),
        ({"storage": {"url": "postgres://x"}}, "storage.url"),
        ({"web": {"form_rate_limit": "lots"}}, "web.form_rate_limit"),
        ({"webb": {}}, "webb"),
        ({"routing": {"rules": [{"team": "nope"}]}}, "routing.rules[0].team"),
        ({"sla": {"calendar": {"timezone": "Mars/Olympus"}}}, "sla.calendar.timezone"),
    ],
)
def test_errors_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, env={})
    assert key in str(info.value)


def test_check_config_cli_masks_secrets_and_fails_on_bad_config(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(ROOT), "HUB_API_TOKEN": "super-secret-token", "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(
        [sys.executable, "-m", "hub", "check-config", "--config", str(ROOT / "config.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "super-secret-token" not in ok.stdout and '"token": "***"' in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("sla:\n  check_every: soon\n", encoding="utf-8")
    failed = subprocess.run(
        [sys.executable, "-m", "hub", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert failed.returncode == 2
    assert "sla.check_every" in failed.stderr
