"""A private Dovecot IMAP server for tests: loopback only, throwaway maildir, one passwd-file user.

It never touches the system's dovecot service: its own config, base_dir and state_dir live in
a temporary directory and it listens on a free port of 127.0.0.1. Plain LOGIN over plaintext
is fine there (loopback only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aioimaplib import aioimaplib

from tests.support.process import free_port
from tests.support.tls import self_signed_certificate

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def dovecot_available() -> bool:
    """True when Debian's dovecot-imapd is installed."""
    return Path(DOVECOT).exists() and Path("/usr/lib/dovecot/imap").exists()


@dataclass(frozen=True, slots=True)
class ImapAccount:
    host: str
    port: int
    username: str
    password: str


class DovecotServer:
    """Start/stop one private Dovecot; `account` is its single user."""

    def __init__(self, username: str = "support", password: str = "imap-test-secret") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hub-dovecot-"))
        self.port = free_port()  # plain IMAP, STARTTLS offered
        self.tls_port = free_port()  # IMAP over TLS (imaps)
        self.username = username
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def account(self) -> ImapAccount:
        return ImapAccount("127.0.0.1", self.port, self.username, self.password)

    def _users(self) -> tuple[str, str, int, int]:
        """(login user, internal user, mail uid, mail gid) fit for whoever runs the tests."""
        if os.getuid() != 0:
            me = pwd.getpwuid(os.getuid())
            return me.pw_name, me.pw_name, me.pw_uid, me.pw_gid
        # Dovecot refuses mail access as root: use its own unprivileged users.
        login = "dovenull"
        internal = "dovecot"
        mail = pwd.getpwnam("dovecot")
        return login, internal, mail.pw_uid, mail.pw_gid

    @property
    def tls_account(self) -> ImapAccount:
        return ImapAccount("127.0.0.1", self.tls_port, self.username, self.password)

    def write_config(self) -> Path:
        login_user, internal_user, uid, gid = self._users()
        certificate = self_signed_certificate(self.dir, "dovecot")
        if certificate is not None:
            cert, key = certificate
            tls = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n"
            imaps_port = self.tls_port
        else:
            tls = "ssl = no\n"
            imaps_port = 0
        home = self.dir / "home" / self.username
        home.mkdir(parents=True)
        for path in (self.dir, self.dir / "home", home):
            path.chmod(0o755)
            if os.getuid() == 0:
                os.chown(path, uid if path == home else 0, gid if path == home else 0)
        (self.dir / "passwd").write_text(
            f"{self.username}:{{PLAIN}}{self.password}:{uid}:{gid}::{home}\n", encoding="utf-8"
        )
        config = f"""
protocols = imap
listen = 127.0.0.1
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
{tls}disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = {uid}
last_valid_uid = {uid}
mail_location = maildir:~/Maildir
mail_fsync = never
protocol imap {{
  mail_max_userip_connections = 50
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.dir}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.dir}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""
        path = self.dir / "dovecot.conf"
        path.write_text(config, encoding="utf-8")
        return path

    def start(self, timeout: float = 15.0) -> None:
        config = self.write_config()
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(config)],
            stdout=(self.dir / "stdout.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                if s.recv(100).startswith(b"* OK"):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"dovecot not ready within {timeout}s:\n{self.log()}")

    def kick(self) -> None:
        """Disconnect every IMAP session of the test user (as a server restart or a network cut would)."""
        doveadm = shutil.which("doveadm") or "/usr/bin/doveadm"
        subprocess.run(
            [doveadm, "-c", str(self.dir / "dovecot.conf"), "kick", self.username],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def log(self) -> str:
        parts = []
        for name in ("dovecot.log", "stdout.log"):
            path = self.dir / name
            if path.exists():
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # The master's process group holds its children (auth, login, imap): end them together.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class ImapClient:
    """A small IMAP client for tests: deliver (APPEND), reset mailboxes, look at flags."""

    def __init__(self, account: ImapAccount) -> None:
        self.account = account
        self.client: aioimaplib.IMAP4 | None = None

    async def __aenter__(self) -> ImapClient:
        self.client = aioimaplib.IMAP4(host=self.account.host, port=self.account.port, timeout=30)
        await self.client.wait_hello_from_server()
        response = await self.client.login(self.account.username, self.account.password)
        assert response.result == "OK", response
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is None:
            return
        transport = self.client.protocol.transport
        if transport is not None and not transport.is_closing():
            # A dropped connection never answers LOGOUT: do not wait for it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.logout(), 3)
        if transport is not None:
            transport.close()

    @property
    def imap(self) -> aioimaplib.IMAP4:
        assert self.client is not None
        return self.client

    async def append(self, raw: bytes, mailbox: str = "INBOX") -> None:
        response = await self.imap.append(raw, mailbox=mailbox)
        assert response.result == "OK", response

    async def create(self, mailbox: str) -> None:
        await self.imap.create(mailbox)

    async def delete(self, mailbox: str) -> None:
        await self.imap.delete(mailbox)

    async def clear(self, mailbox: str = "INBOX") -> None:
        """Delete every message of a mailbox (UIDs keep growing, UIDVALIDITY stays)."""
        response = await self.imap.select(mailbox)
        assert response.result == "OK", response
        await self.imap.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
        await self.imap.expunge()
        await self.imap.close()

    async def uids_with_flag(self, mailbox: str, flag: str) -> list[int]:
        """UIDs of messages in `mailbox` that carry `flag` (e.g. \\Seen)."""
        response = await self.imap.select(mailbox)
        assert response.result == "OK", response
        keyword = flag.lstrip("\\").upper()
        found = await self.imap.uid_search(keyword, charset=None)
        await self.imap.close()
        line = next((ln for ln in found.lines if ln.startswith(b"SEARCH") or ln[:1].isdigit()), b"")
        return [int(x) for x in line.replace(b"SEARCH", b"").split()]

    async def count(self, mailbox: str = "INBOX") -> int:
        response = await self.imap.status(mailbox, "(MESSAGES)")
        text = b" ".join(bytes(x) for x in response.lines).decode()
        import re

        match = re.search(r"MESSAGES (\d+)", text)
        return int(match.group(1)) if match else 0


async def wait_until(predicate_coro: object, timeout: float = 20.0, every: float = 0.1) -> None:
    """Await `predicate_coro()` until it is truthy (bounded)."""
    import inspect

    deadline = time.monotonic() + timeout
    while True:
        assert callable(predicate_coro)
        value = predicate_coro()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)
