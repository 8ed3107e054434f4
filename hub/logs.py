"""Logging set-up: operator-readable lines, and no secret ever written to a log."""

from __future__ import annotations

import logging
import re

_URL_CREDENTIALS = re.compile(r"(//[^:/@\s]+:)[^@\s]+@")


class RedactSecrets(logging.Filter):
    """Replaces every configured secret (tokens, passwords, credentials in URLs) with ***."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def clean(self, text: str) -> str:
        """`text` with every secret and every password in a URL replaced by ***."""
        cleaned = _URL_CREDENTIALS.sub(r"\1***@", text)
        for secret in self._secrets:
            cleaned = cleaned.replace(secret, "***")
        return cleaned

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.clean(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


class RedactingFormatter(logging.Formatter):
    """Redacts the whole formatted line: the message, and also tracebacks and stack info,
    which a filter never sees (they are formatted after filtering)."""

    def __init__(self, fmt: str, redact: RedactSecrets) -> None:
        super().__init__(fmt)
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact.clean(super().format(record))


def configure_logging(level: str, secrets: list[str]) -> None:
    """Log to stderr at `level`, with secrets redacted from every record."""
    redact = RedactSecrets(secrets)
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", redact))
    handler.addFilter(redact)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # Python warnings (which may quote values) go through the same redacting handler.
    logging.captureWarnings(True)
