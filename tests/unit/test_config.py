"""Configuration: the shipped config.yaml is valid, errors name the key, env overrides secrets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from hub.config import (
    ConfigError,
    RateLimit,
    load_settings,
    masked_dump,
    parse_duration,
    parse_rate_limit,
    settings_from_dict,
)

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
    assert settings.web.login_rate_limit == RateLimit(count=10, per_seconds=60)
    assert settings.web.login_manager_rate_limit == RateLimit(count=5, per_seconds=60)
    assert settings.web.metrics_token is None
    defaults = settings_from_dict({}, env={}).web
    assert (defaults.login_rate_limit, defaults.login_manager_rate_limit, defaults.metrics_token) == (
        settings.web.login_rate_limit,
        settings.web.login_manager_rate_limit,
        None,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/m", RateLimit(count=10, per_seconds=60)),
        ("3/5m", RateLimit(count=3, per_seconds=300)),
        ("5 / h", RateLimit(count=5, per_seconds=3600)),
        ("0", RateLimit(count=0, per_seconds=1)),
    ],
)
def test_rate_limits(text: str, expected: RateLimit) -> None:
    assert parse_rate_limit(text) == expected


@pytest.mark.parametrize("bad", ["lots", "10", "10/x", "10/0m", "-1/m", "1.5/m"])
def test_bad_rate_limits_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid rate limit"):
        parse_rate_limit(bad)


def test_process_settings_from_the_environment() -> None:
    assert settings_from_dict({}, env={}).process.cpus == []
    assert settings_from_dict({}, env={}).process.event_loop == "uvloop"
    settings = settings_from_dict({}, env={"HUB_CPUS": "0, 1", "HUB_EVENT_LOOP": "asyncio"})
    assert (settings.process.cpus, settings.process.event_loop) == ([0, 1], "asyncio")
    assert settings_from_dict({"process": {"cpus": 1}}, env={}).process.cpus == [1]


def test_env_overrides_secrets_and_urls() -> None:
    env = {
        "HUB_STORAGE_URL": "sqlite:////tmp/x.db",
        "HUB_WEB_PORT": "9999",
        "HUB_API_TOKEN": "t0ken-value-long-enough",
    }
    settings = load_settings(ROOT / "config.yaml", env=env)
    assert settings.storage.url == "sqlite:////tmp/x.db"
    assert settings.web.port == 9999
    assert (
        settings.api.token is not None and settings.api.token.get_secret_value() == "t0ken-value-long-enough"
    )
    dumped = masked_dump(settings)
    assert dumped["api"]["token"] == "***"
    assert "t0ken-value-long-enough" not in str(dumped)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HUB_WEB_PORT": "80a"}, "web.port (from HUB_WEB_PORT): "),
        ({"HUB_IMAP_PORT": "imap"}, "email.imap.port (from HUB_IMAP_PORT): "),
        ({"HUB_CPUS": "first"}, "process.cpus.0 (from HUB_CPUS): "),
        ({"HUB_LOG_LEVEL": "verbose"}, "log_level (from HUB_LOG_LEVEL): "),
        ({"HUB_STORAGE_URL": "postgres://db/hub"}, "storage.url (from HUB_STORAGE_URL): "),
    ],
)
def test_an_error_in_a_value_from_the_environment_names_the_variable(
    env: dict[str, str], message: str
) -> None:
    # config.yaml's own value is fine: without the variable's name the operator looks there.
    with pytest.raises(ConfigError) as info:
        load_settings(ROOT / "config.yaml", env=env)
    assert message in str(info.value)
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"web": {"port": "80a"}}, env={})
    assert "from HUB_" not in str(info.value)


def test_a_notify_webhook_secret_in_the_environment_without_a_webhook_configures_nothing() -> None:
    # One .env for every deployment: the secret is there, the webhook is not configured here.
    env = {"HUB_NOTIFY_WEBHOOK_SECRET": "hmac-secret-value"}
    assert load_settings(ROOT / "config.yaml", env=env).notify.webhook is None
    hooked = settings_from_dict({"notify": {"webhook": {"url": "https://hooks.example.com/hub"}}}, env=env)
    assert hooked.notify.webhook is not None and hooked.notify.webhook.secret is not None
    assert hooked.notify.webhook.secret.get_secret_value() == "hmac-secret-value"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"sla": {"check_every": "often"}}, "sla.check_every"),
        ({"sla": {"policies": {"message": {"first_response": "4x"}}}}, "sla.policies.message.first_response"),
        ({"web": {"port": 70000}}, "web.port"),
        ({"storage": {"url": "postgres://x"}}, "storage.url"),
        ({"web": {"form_rate_limit": "lots"}}, "web.form_rate_limit"),
        ({"web": {"login_rate_limit": "many"}}, "web.login_rate_limit"),
        ({"web": {"login_manager_rate_limit": "5/0m"}}, "web.login_manager_rate_limit"),
        ({"web": {"login_rate_limits": "5/m"}}, "web.login_rate_limits"),
        ({"webb": {}}, "webb"),
        ({"routing": {"rules": [{"team": "nope"}]}}, "routing.rules[0].team"),
        ({"sla": {"calendar": {"timezone": "Mars/Olympus"}}}, "sla.calendar.timezone"),
        ({"process": {"event_loop": "trio"}}, "process.event_loop"),
        ({"process": {"cpus": [0, 0]}}, "process.cpus"),
        ({"process": {"cpus": [-1]}}, "process.cpus"),
        ({"process": {"cpus": "zero"}}, "process.cpus"),
        # Accepted by check-config, then a traceback at start or a setting that cannot work:
        ({"telegram": {"webhook_path": "telegram-hook"}}, "telegram.webhook_path"),
        ({"telegram": {"api_base": "api.telegram.org"}}, "telegram.api_base"),
        ({"web": {"public_url": "hub.example.com"}}, "web.public_url"),
        ({"email": {"imap": {"port": 0}}}, "email.imap.port"),
        ({"email": {"smtp": {"port": 70000}}}, "email.smtp.port"),
        ({"notify": {"webhook": {"url": "ftp://x"}}}, "notify.webhook.url"),
    ],
)
def test_errors_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, env={})
    assert key in str(info.value)


def test_check_config_cli_masks_secrets_and_fails_on_bad_config(tmp_path: Path) -> None:
    env = {
        "PYTHONPATH": str(ROOT),
        "HUB_API_TOKEN": "super-secret-token",
        "HUB_METRICS_TOKEN": "metrics-secret-token",
        "PATH": "/usr/bin:/bin",
    }
    ok = subprocess.run(
        [sys.executable, "-m", "hub", "check-config", "--config", str(ROOT / "config.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "super-secret-token" not in ok.stdout and '"token": "***"' in ok.stdout
    assert "metrics-secret-token" not in ok.stdout and '"metrics_token": "***"' in ok.stdout
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


def test_every_secret_is_handed_to_the_log_redaction() -> None:
    from hub.cli import _secrets

    env = {
        "HUB_API_TOKEN": "api-secret-token-1",
        "HUB_SECRET_KEY": "key-secret-2",
        "HUB_METRICS_TOKEN": "metrics-secret-3",
        "HUB_IMAP_PASSWORD": "imap-secret-4",
        "HUB_SMTP_PASSWORD": "smtp-secret-5",
        "HUB_TELEGRAM_TOKEN": "tg-secret-6",
        "HUB_TELEGRAM_WEBHOOK_SECRET": "tgwh-secret-7",
        "HUB_NOTIFY_WEBHOOK_SECRET": "notify-secret-8",
    }
    settings = settings_from_dict(
        {"notify": {"webhook": {"url": "https://alerts.example.com/hook"}}}, env=env
    )
    assert set(env.values()) <= set(_secrets(settings))
    dumped = str(masked_dump(settings))
    assert not [value for value in env.values() if value in dumped]


def test_webhook_header_values_are_masked_in_the_log() -> None:
    """check-config masks notify.webhook.headers values; a log line quoting them is masked too."""
    from hub.cli import _secrets
    from hub.logs import RedactSecrets

    settings = settings_from_dict(
        {
            "notify": {
                "webhook": {
                    "url": "https://alerts.example.com/hook",
                    "headers": {"Authorization": "Bearer hdr-token-9f3a", "X-Api-Key": "apikey-77c1"},
                }
            }
        },
        env={"HUB_TELEGRAM_WEBHOOK_SECRET": "tg-secret-token-header-1"},
    )
    redact = RedactSecrets(_secrets(settings))
    lines = [
        "notify: POST https://alerts.example.com/hook with Authorization: Bearer hdr-token-9f3a",
        "notify: the receiver echoed token hdr-token-9f3a and key apikey-77c1",
        "telegram: webhook call with X-Telegram-Bot-Api-Secret-Token: tg-secret-token-header-1",
    ]
    cleaned = [redact.clean(line) for line in lines]
    for secret in ("hdr-token-9f3a", "apikey-77c1", "tg-secret-token-header-1"):
        assert not [line for line in cleaned if secret in line], cleaned
    assert cleaned[0].endswith("Authorization: ***") and "***" in cleaned[2]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("check_every", "9999999999d"),
        ("check_every", ".inf"),
        ("first_response", "3000000d"),
        ("check_every", ".nan"),
    ],
)
def test_a_duration_too_long_to_compute_with_is_a_config_error(tmp_path: Path, key: str, value: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"sla:\n  {key}: {value}\n", encoding="utf-8")
    failed = subprocess.run(
        [sys.executable, "-m", "hub", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert failed.returncode == 2, failed.stderr
    assert f"sla.{key}" in failed.stderr and "Traceback" not in failed.stderr


@pytest.mark.parametrize(
    ("data", "env", "message"),
    [
        ({"telegram": {"enabled": True}}, {}, "telegram.token: set HUB_TELEGRAM_TOKEN"),
        (
            {"telegram": {"enabled": True}},
            {"HUB_TELEGRAM_TOKEN": "nodigits"},
            "telegram.token: not a bot token",
        ),
        (
            {"telegram": {"enabled": True, "mode": "webhook"}},
            {"HUB_TELEGRAM_TOKEN": "123:abc"},
            "telegram.webhook_secret: webhook mode needs",
        ),
        ({"process": {"cpus": [99999]}}, {}, "process.cpus: CPU 99999 is not available"),
        ({"storage": {"url": "sqlite:///"}}, {}, "storage.url: 'sqlite:///' has no file path"),
        ({"storage": {"url": "sqlite:///?busy_timeout=5s"}}, {}, "storage.url: "),
        ({"email": {"enabled": True, "imap": {"host": ""}}}, {}, "email.imap.host: empty"),
        ({"email": {"enabled": True, "smtp": {"host": " "}}}, {}, "email.smtp.host: empty"),
    ],
)
def test_what_run_refuses_check_config_refuses(
    tmp_path: Path, data: dict[str, object], env: dict[str, str], message: str
) -> None:
    from hub.config import check_startable

    settings = settings_from_dict(data, env=env)  # valid as far as the schema goes
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_startable(settings)
    # The same in `hub check-config`: exit 2, the key named, no traceback.
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps(data), encoding="utf-8")
    failed = subprocess.run(
        [sys.executable, "-m", "hub", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("HUB_")},
            **env,
            "PYTHONPATH": str(ROOT),
        },
        timeout=60,
    )
    assert failed.returncode == 2, failed.stderr
    assert message in failed.stderr and "Traceback" not in failed.stderr


def test_email_and_telegram_with_what_they_need_pass_the_start_checks() -> None:
    from hub.config import check_startable

    settings = settings_from_dict(
        {"telegram": {"enabled": True, "mode": "webhook"}, "email": {"enabled": True}},
        env={"HUB_TELEGRAM_TOKEN": "123:abc", "HUB_TELEGRAM_WEBHOOK_SECRET": "s3cret"},
    )
    check_startable(settings)


@pytest.mark.parametrize(
    ("holidays", "message"),
    [
        (
            {"country": "UA", "subdivision": "ZZ"},
            "sla.calendar.holidays.subdivision: 'ZZ' is not a subdivision of UA",
        ),
        ({"country": "US", "subdivision": "ZZ"}, "sla.calendar.holidays.subdivision: 'ZZ' "),
        ({"country": "XX", "subdivision": "ZZ"}, "sla.calendar.holidays.country: 'XX' is not a country"),
        ({"subdivision": "CA"}, "sla.calendar.holidays.subdivision: needs a country"),
        ({"dates": "2026-12-25"}, "sla.calendar.holidays.dates: '2026-12-25' is not a list of dates"),
        ({"dates": {"xmas": "2026-12-25"}}, "sla.calendar.holidays.dates: {'xmas'"),
    ],
)
def test_holiday_errors_name_the_key_at_fault(holidays: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"sla": {"calendar": {"holidays": holidays}}}, env={})
    assert str(info.value).startswith(message), str(info.value)


def test_a_single_unquoted_holiday_date_is_refused_as_not_a_list(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("sla:\n  calendar:\n    holidays:\n      dates: 2026-12-25\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^sla\.calendar\.holidays\.dates: .* is not a list of dates"):
        load_settings(config, env={})
    settings = settings_from_dict(
        {"sla": {"calendar": {"holidays": {"country": "US", "subdivision": "CA", "dates": ["2026-12-31"]}}}},
        env={},
    )
    assert settings.sla.calendar.holidays["subdivision"] == "CA"


@pytest.mark.parametrize("kind", ["directory", "latin-1", "unreadable"])
def test_a_config_path_that_cannot_be_read_is_a_config_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "config.yaml"
    if kind == "directory":
        path.mkdir()
        expected = "is a directory"
    elif kind == "latin-1":
        path.write_bytes("web:\n  public_url: https://caf\u00e9.example\n".encode("latin-1"))
        expected = "is not UTF-8 text"
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        path.write_text("{}\n", encoding="utf-8")
        path.chmod(0)
        expected = "cannot be read"
    with pytest.raises(ConfigError, match="^" + re.escape(f"config file {path} {expected}")):
        load_settings(path, env={})
    failed = subprocess.run(
        [sys.executable, "-m", "hub", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert failed.returncode == 2, failed.stderr
    assert f"config file {path} {expected}" in failed.stderr and "Traceback" not in failed.stderr


@pytest.mark.parametrize(
    ("raised", "code", "message"), [(EOFError, 1, "no password given"), (KeyboardInterrupt, 130, "cancelled")]
)
def test_hash_password_prompt_ended_by_ctrl_d_or_ctrl_c_exits_quietly(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    raised: type[BaseException],
    code: int,
    message: str,
) -> None:
    import getpass

    from hub.cli import main

    def interrupted(prompt: str = "") -> str:
        raise raised

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(getpass, "getpass", interrupted)
    assert main(["hash-password"]) == code
    captured = capsys.readouterr()
    assert captured.out == "" and f"hub: {message}" in captured.err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs a pseudo-terminal")
@pytest.mark.parametrize(
    ("keys", "code", "message"), [(b"\x04", 1, b"no password given"), (b"\x03", 130, b"cancelled")]
)
def test_hash_password_at_a_terminal_ctrl_d_and_ctrl_c(keys: bytes, code: int, message: bytes) -> None:
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.environ["PYTHONPATH"] = str(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "hub", "hash-password"])
    output = b""
    deadline = time.monotonic() + 60
    sent = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        if not sent and b"Password: " in output:
            os.write(fd, keys)
            sent = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == code, output
    assert message in output and b"Traceback" not in output


def test_check_config_masks_every_notify_webhook_header_value(tmp_path: Path) -> None:
    data = {
        "notify": {
            "webhook": {
                "url": "https://alerts.example.com/hook",
                "headers": {
                    "Authorization": "Bearer hdr-secret-777",
                    "X-Api-Key": "key-888",
                    "X-Team": "ops-999",
                },
            }
        }
    }
    dumped = masked_dump(settings_from_dict(data, env={}))
    assert dumped["notify"]["webhook"]["headers"] == {
        "Authorization": "***",
        "X-Api-Key": "***",
        "X-Team": "***",
    }
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(data), encoding="utf-8")
    ok = subprocess.run(
        [sys.executable, "-m", "hub", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert '"Authorization": "***"' in ok.stdout
    assert not [value for value in ("hdr-secret-777", "key-888", "ops-999") if value in ok.stdout]


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("telegram:\n  enabled: true\nweb:\n  port: 8081\ntelegram:\n  enabled: false\n", 5, "'telegram'"),
        ("web:\n  port: 8081\n  host: 0.0.0.0\n  port: 8082\n", 4, "'port'"),
    ],
)
def test_a_key_given_twice_is_a_config_error_naming_its_line(
    tmp_path: Path, text: str, line: int, key: str
) -> None:
    # PyYAML keeps the last one silently: the first telegram section was ignored entirely.
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert f"line {line}: {key} is given twice" in str(info.value)


def test_bearer_tokens_lose_surrounding_whitespace_and_short_ones_are_refused() -> None:
    env = {"HUB_API_TOKEN": "  api-token-long-enough-1 \n", "HUB_METRICS_TOKEN": "\tmetrics-token-long-2 "}
    settings = settings_from_dict({"web": {"secret_key": " signing-key "}}, env=env)
    assert (
        settings.api.token is not None and settings.api.token.get_secret_value() == "api-token-long-enough-1"
    )
    assert settings.web.metrics_token is not None
    assert settings.web.metrics_token.get_secret_value() == "metrics-token-long-2"
    assert settings.web.secret_key is not None and settings.web.secret_key.get_secret_value() == "signing-key"
    for where, env, data in (
        ("api.token (from HUB_API_TOKEN)", {"HUB_API_TOKEN": "tok "}, {}),
        ("web.metrics_token (from HUB_METRICS_TOKEN)", {"HUB_METRICS_TOKEN": "  short-metrics  "}, {}),
        ("api.token:", {}, {"api": {"token": "fifteen-chars-x"}}),
    ):
        with pytest.raises(ConfigError) as refused:
            settings_from_dict(data, env=env)
        message = str(refused.value)
        assert where in message and "at least 16" in message, message
        assert "tok" not in message.replace("token", "") and "short-metrics" not in message
        assert "fifteen-chars-x" not in message
    sixteen = settings_from_dict({"api": {"token": " sixteen-chars-xy "}}, env={})
    assert sixteen.api.token is not None and sixteen.api.token.get_secret_value() == "sixteen-chars-xy"
