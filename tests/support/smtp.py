"""A real SMTP server on loopback (aiosmtpd) that keeps every message it accepts."""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from tests.support.process import free_port


class _Capture:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.lock = threading.Lock()
        self.reject: set[str] = set()  # recipients refused with 550 (a permanent failure)
        self.refuse_sender = ""  # an SMTP reply to every MAIL FROM while set
        self.senders_refused = 0

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if self.refuse_sender:
            self.senders_refused += 1
            return self.refuse_sender
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self.reject:
            return "550 5.1.1 <" + address + ">: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(
                (list(envelope.rcpt_tos), bytes(envelope.original_content or envelope.content))
            )
        return "250 OK: queued"


class SmtpServer:
    """`start()` / `stop()` a capturing SMTP server; it can be stopped and started on the same port.

    With `certificate`, `mode` "ssl" speaks SMTP over TLS and "starttls" requires STARTTLS;
    with `credentials`, AUTH is required and checked.
    """

    def __init__(
        self,
        port: int | None = None,
        certificate: tuple[Path, Path] | None = None,
        mode: str = "plain",
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self._capture = _Capture()
        self._controller: Controller | None = None
        self._certificate = certificate
        self._mode = mode
        self._credentials = credentials
        self.logins: list[str] = []

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        login = data.login.decode() if isinstance(data.login, bytes) else str(data.login)
        password = data.password.decode() if isinstance(data.password, bytes) else str(data.password)
        ok = self._credentials is not None and (login, password) == self._credentials
        if ok:
            self.logins.append(login)
        return AuthResult(success=ok)

    def start(self) -> None:
        kwargs: dict[str, Any] = {}
        if self._certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self._certificate[0]), str(self._certificate[1]))
            if self._mode == "ssl":
                kwargs["ssl_context"] = context
            elif self._mode == "starttls":
                kwargs.update(tls_context=context, require_starttls=True)
        if self._credentials is not None:
            # aiosmtpd only counts STARTTLS as TLS for AUTH; on an SMTPS socket the whole session is TLS.
            kwargs.update(
                authenticator=self._authenticate, auth_required=True, auth_require_tls=self._mode != "ssl"
            )
        self._controller = Controller(self._capture, hostname="127.0.0.1", port=self.port, **kwargs)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def refuse_sender(self, reply: str) -> None:
        """Answer every MAIL FROM with `reply` (e.g. "553 5.7.1 ..."); "" accepts again."""
        self._capture.refuse_sender = reply

    @property
    def senders_refused(self) -> int:
        """How many MAIL FROM commands `refuse_sender` has answered."""
        return self._capture.senders_refused

    def reject(self, address: str) -> None:
        """Refuse mail to `address` with a permanent 550 from now on."""
        self._capture.reject.add(address.lower())

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
