"""A lean HTTP/1.1 load client for bench.ingest (`--client raw`).

aiohttp's client costs ~0.3 ms of CPU per request here, which a two-core machine cannot spare
when the hub may use both cores. This one writes pre-encoded requests on keep-alive connections
(one request in flight per connection) and reads only the status line, Content-Length and body.
It understands exactly what the hub answers (Content-Length bodies, no chunking) and fails
loudly on anything else.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        marker = head.find(b"\r\ncontent-length:")
        if marker < 0:
            self._fail(RuntimeError(f"response without Content-Length: {head[:200]!r}"))
            return
        line_end = head.find(b"\r\n", marker + 2)
        length = int(head[marker + 17 : line_end if line_end > 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buffer[: end + 4 + length]
        waiter, self.waiter = self.waiter, None
        waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("the hub closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


def encode_post(url: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    """One POST with a JSON body, ready for the wire."""
    payload = json.dumps(body, ensure_ascii=False).encode()
    host = urllib.parse.urlsplit(url).netloc
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def run_load(
    url: str, total: int, concurrency: int, make_request: Callable[[int], bytes]
) -> dict[str, Any]:
    """Send `total` requests (built up front) with `concurrency` in flight; latencies in seconds."""
    requests = [make_request(i) for i in range(total)]
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"the hub's URL needs a host and a port: {url}")
    loop = asyncio.get_running_loop()
    connections = [
        (await loop.create_connection(_Connection, parts.hostname, parts.port))[1] for _ in range(concurrency)
    ]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    next_index = 0

    async def one_worker(connection: _Connection) -> None:
        nonlocal next_index
        while next_index < total:
            data = requests[next_index]
            next_index += 1
            started = time.perf_counter()
            status = await connection.request(data)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    cpu = time.process_time()
    try:
        await asyncio.gather(*(one_worker(each) for each in connections))
    finally:
        for each in connections:
            if each.transport is not None:
                each.transport.close()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    return {"elapsed": elapsed, "latencies": latencies, "statuses": statuses, "cpu": cpu}
