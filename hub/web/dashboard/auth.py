"""Dashboard sign-in: argon2 passwords, signed session cookies, CSRF tokens, one-time login links.

Sessions live only in the cookie, signed with HMAC-SHA256 under `web.secret_key`
(HUB_SECRET_KEY). Without one, a random key is made per process (sessions then end with the
process, and links minted elsewhere do not verify): fine for development, warned about.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from hub.config import ManagerSettings, Settings

log = logging.getLogger(__name__)

SESSION_COOKIE = "hub_session"
SESSION_TTL = timedelta(hours=12)
LINK_TTL = timedelta(minutes=10)

_hasher = PasswordHasher()
_process_key: bytes | None = None
# A fixed hash to verify against when the user is unknown, so timing does not tell
# whether a manager id exists.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def secret_key(settings: Settings) -> bytes:
    """The signing key: HUB_SECRET_KEY, or a random per-process key (with a warning) when unset."""
    global _process_key
    configured = settings.web.secret_key
    if configured is not None and configured.get_secret_value():
        return hashlib.sha256(b"hub-dashboard:" + configured.get_secret_value().encode()).digest()
    if _process_key is None:
        _process_key = secrets.token_bytes(32)
        log.warning(
            "web.secret_key (HUB_SECRET_KEY) is not set: dashboard sessions and login links use a "
            "random key of this process and end when it stops; set HUB_SECRET_KEY in production"
        )
    return _process_key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, data: dict[str, Any]) -> str:
    """`payload.signature`, both base64url; the payload is JSON."""
    payload = _b64(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())
    mac = hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def unsign(key: bytes, token: str) -> dict[str, Any] | None:
    """The JSON payload of a token signed with `key`, or None if it was tampered with."""
    payload, _, mac = token.partition(".")
    if not payload or not mac:
        return None
    expected = hmac.new(key, payload.encode("ascii", "replace"), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        data = json.loads(_unb64(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True, slots=True)
class Session:
    """A browser session: anonymous (before sign-in) or a manager's."""

    sid: str
    manager_id: str | None
    expires: float

    def cookie(self, key: bytes) -> str:
        """The signed cookie value."""
        return sign(key, {"p": "session", "sid": self.sid, "m": self.manager_id, "exp": self.expires})


def new_session(manager_id: str | None, now: datetime) -> Session:
    """A fresh session (a new id on every sign-in, so a planted cookie cannot be reused)."""
    return Session(secrets.token_urlsafe(18), manager_id, (now + SESSION_TTL).timestamp())


def read_session(key: bytes, value: str | None, now: datetime) -> Session | None:
    """The session in a cookie value, if it is genuine and unexpired."""
    if not value:
        return None
    data = unsign(key, value)
    if data is None or data.get("p") != "session":
        return None
    sid, manager, expires = data.get("sid"), data.get("m"), data.get("exp")
    if not isinstance(sid, str) or not isinstance(expires, int | float) or expires < now.timestamp():
        return None
    return Session(sid, manager if isinstance(manager, str) else None, float(expires))


def csrf_token(key: bytes, session: Session) -> str:
    """The CSRF token bound to this session (forms send it as `csrf`, scripts as X-CSRF-Token)."""
    return _b64(hmac.new(key, b"csrf:" + session.sid.encode(), hashlib.sha256).digest())


def csrf_ok(key: bytes, session: Session | None, given: str | None) -> bool:
    """True when `given` is this session's CSRF token."""
    if session is None or not given:
        return False
    return hmac.compare_digest(csrf_token(key, session), given)


def hash_password(password: str) -> str:
    """An argon2id hash for `managers[].password_hash`."""
    return _hasher.hash(password)


async def verify_password(manager: ManagerSettings | None, password: str) -> bool:
    """True when the password matches the manager's hash (argon2 runs off the event loop)."""
    stored = manager.password_hash if manager is not None and manager.active else None

    def check() -> bool:
        try:
            return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def mint_login_token(settings: Settings, manager_id: str, now: datetime, ttl: timedelta = LINK_TTL) -> str:
    """A one-time sign-in token for `/dashboard/link/{token}` (the bot's `/dashboard` sends it)."""
    data = {"p": "login", "m": manager_id, "n": secrets.token_urlsafe(12), "exp": (now + ttl).timestamp()}
    return sign(secret_key(settings), data)


def read_login_token(settings: Settings, token: str, now: datetime) -> tuple[str, str] | None:
    """(manager id, nonce) of a genuine unexpired login token; the caller spends the nonce once."""
    data = unsign(secret_key(settings), token)
    if data is None or data.get("p") != "login":
        return None
    manager, nonce, expires = data.get("m"), data.get("n"), data.get("exp")
    if not isinstance(manager, str) or not isinstance(nonce, str) or not isinstance(expires, int | float):
        return None
    if expires < now.timestamp():
        return None
    return manager, nonce


def login_link(settings: Settings, manager_id: str, now: datetime, ttl: timedelta = LINK_TTL) -> str:
    """The full one-time sign-in URL for a manager (`web.public_url` + /dashboard/link/TOKEN)."""
    base = settings.web.public_url.rstrip("/") or f"http://{settings.web.host}:{settings.web.port}"
    return f"{base}/dashboard/link/{mint_login_token(settings, manager_id, now, ttl)}"
