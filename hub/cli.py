"""`hub run`, `hub check-config` and `hub hash-password`.

Only the standard library is imported up front: `main` takes SIGTERM first, then loads the
rest (pydantic, the config), which can take a second on a busy machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hub.config import Settings

log = logging.getLogger("hub")


class Stopped(KeyboardInterrupt):
    """SIGTERM before the event loop took it over: unwinds like Ctrl-C, with its own exit code."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def _signal_of(exc: KeyboardInterrupt) -> signal.Signals:
    return signal.Signals(exc.signum) if isinstance(exc, Stopped) else signal.SIGINT


def _exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process a signal ended."""
    return 128 + _signal_of(exc)


def _secrets(settings: Settings) -> list[str]:
    values = [
        settings.api.token,
        settings.web.secret_key,
        settings.web.metrics_token,
        settings.email.imap.password,
        settings.email.smtp.password,
        settings.telegram.token,
        settings.telegram.webhook_secret,
    ]
    found = [v.get_secret_value() for v in values if v is not None]
    if settings.notify.webhook is not None:
        if settings.notify.webhook.secret is not None:
            found.append(settings.notify.webhook.secret.get_secret_value())
        # Header values are often credentials (check-config masks them too); a line may quote
        # the whole value or only the credential after its scheme ("Bearer <token>").
        for value in settings.notify.webhook.headers.values():
            found.append(value)
            scheme, _, credential = value.strip().partition(" ")
            if scheme and credential.strip():
                found.append(credential.strip())
    if settings.storage.backend == "mongo":
        found.append(settings.storage.url)
    return found


async def _run(settings: Settings) -> int:
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signals first: a SIGINT/SIGTERM during the (slow) imports and the start stops cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from hub.app import Hub, run_until_stopped

    log.info(
        "process: %s event loop, CPUs %s",
        type(loop).__module__.split(".")[0],
        ",".join(map(str, sorted(os.sched_getaffinity(0)))) if hasattr(os, "sched_getaffinity") else "any",
    )
    hub = Hub(settings)
    await run_until_stopped(hub, stop)
    return 0


def _hash_password(from_stdin: bool) -> int:
    """Print an argon2 hash for `managers[].password_hash` (the password never touches argv or logs)."""
    import getpass

    from hub.web.dashboard.auth import hash_password

    try:
        if from_stdin or not sys.stdin.isatty():
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != password:
                print("hub: the passwords do not match", file=sys.stderr)
                return 2
    except EOFError:  # Ctrl-D at the prompt
        print("\nhub: no password given", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C at the prompt (or SIGTERM)
        print("\nhub: cancelled", file=sys.stderr)
        return _exit_code(exc)
    if len(password) < 8:
        print("hub: use a password of at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hub` console script and `python -m hub`."""
    # First of all: SIGTERM's default action would end the process without a word (and a
    # config read from a pipe or a slow disk can keep it here for long).
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:
        # Stopped before logging was set up (which `_main` handles itself from then on).
        print(f"hub: stopped by {_signal_of(exc).name} before it started", file=sys.stderr)
        return _exit_code(exc)
    finally:
        if previous is not None:  # for callers in the same process (tests)
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="hub", description="Omnichannel inbound-request hub")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start everything enabled in the config until SIGINT/SIGTERM")
    run.add_argument("--config", help="path to config.yaml (default: $HUB_CONFIG or ./config.yaml)")
    check = sub.add_parser("check-config", help="validate the config and print it with secrets masked")
    check.add_argument("--config", help="path to config.yaml (default: $HUB_CONFIG or ./config.yaml)")
    hashing = sub.add_parser(
        "hash-password", help="read a password (prompt, or stdin when piped) and print its argon2 hash"
    )
    hashing.add_argument("--stdin", action="store_true", help="read the password from stdin")
    args = parser.parse_args(argv)
    if args.command == "hash-password":
        return _hash_password(args.stdin)
    from hub import process
    from hub.config import ConfigError, check_startable, load_settings, masked_dump
    from hub.logs import configure_logging

    try:
        settings = load_settings(args.config)
        check_startable(settings)
    except ConfigError as exc:
        print(f"hub: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        import json

        print(json.dumps(masked_dump(settings), indent=2, ensure_ascii=False))
        return 0
    configure_logging(settings.log_level, _secrets(settings))
    from hub.app import StartError

    try:
        return process.run(_run(settings), settings.process)
    except ConfigError as exc:
        print(f"hub: bad configuration: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        # One line, through the redacting log handler: the message may quote a storage URL.
        log.critical("hub cannot start: %s", exc)
        return 1
    except KeyboardInterrupt as exc:
        log.info("hub stopped by %s before it started", _signal_of(exc).name)
        return _exit_code(exc)
    except Exception:
        # Through logging, not Python's default hook: the traceback may quote a storage URL or
        # a token, and only the log handler redacts them.
        log.critical("hub stopped by an unexpected error", exc_info=True)
        return 1
