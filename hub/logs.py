"""Logging set-up: operator-readable lines, and no secret ever written to a log."""

from __future__ import annotations

import logging
import re


class RedactSecrets(logging.Filter):
    """Replaces every configured secret (tokens, passwords, credentials in URLs) with ***."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = re.sub(r"(//[^:/@\s]+:)[^@\s]+@", r"\1***@", message)
        for secret in self._secrets:
            cleaned = cleaned.replace(secret, "***")
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


def configure_logging(level: str, secrets: list[str]) -> None:
    """Log to stderr at `level`, with secrets redacted from every record."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
