"""Per-client request limits and the client address behind trusted proxies."""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web

from hub.config import RateLimit


class SlidingWindowLimiter:
    """At most `limit.count` hits per key in any window of `limit.per_seconds`."""

    def __init__(
        self, limit: RateLimit, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self._limit = limit
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._max_keys = max_keys

    def hit(self, key: str) -> float | None:
        """Count a hit; None if allowed, else seconds until the next hit would be allowed."""
        if not self._limit.enabled:
            return None
        now = self._clock()
        window = self._limit.per_seconds
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self._max_keys:
                self._prune(now)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= self._limit.count:
            return hits[0] + window - now
        hits.append(now)
        return None

    def _prune(self, now: float) -> None:
        # Keeps memory bounded under many distinct addresses (a scan or a botnet).
        stale = [k for k, v in self._hits.items() if not v or v[-1] <= now - self._limit.per_seconds]
        for key in stale:
            del self._hits[key]
        if len(self._hits) >= self._max_keys:
            self._hits.clear()


def _is_trusted(address: str, trusted: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in trusted:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def client_ip(request: web.Request, trusted_proxies: list[str]) -> str:
    """The peer address, or X-Forwarded-For's nearest untrusted hop when the peer is a trusted proxy."""
    peer = request.remote or ""
    if not trusted_proxies or not _is_trusted(peer, trusted_proxies):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer
