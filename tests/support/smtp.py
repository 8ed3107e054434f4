"""A real SMTP server on loopback (aiosmtpd) that keeps every message it accepts."""

from __future__ import annotations

import email
import email.policy
import threading
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.process import free_port


class _Capture:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(
                (list(envelope.rcpt_tos), bytes(envelope.original_content or envelope.content))
            )
        return "250 OK: queued"


class SmtpServer:
    """`start()` / `stop()` a capturing SMTP server; it can be stopped and started on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._capture = _Capture()
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self._capture, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def raw(self) -> list[bytes]:
        with self._capture.lock:
            return [data for _, data in self._capture.messages]

    @property
    def recipients(self) -> list[list[str]]:
        with self._capture.lock:
            return [rcpts for rcpts, _ in self._capture.messages]

    def parsed(self) -> list[EmailMessage]:
        """Every accepted message, parsed with the modern policy."""
        result: list[EmailMessage] = []
        for data in self.raw:
            msg = email.message_from_bytes(data, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            result.append(msg)
        return result
