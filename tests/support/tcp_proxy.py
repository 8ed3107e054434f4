"""A small TCP proxy on 127.0.0.1 that injects network faults between the hub and a server.

Without netem or toxiproxy here, faults come from this: each new connection follows the
fault armed at the time it is accepted (then the proxy goes back to passing bytes through):

- `delay(seconds)`: every chunk is held that long before it is forwarded;
- `cut_after(direction, marker, extra)`: once `marker` has passed in `direction` ("up" =
  client to server, "down" = server to client) and `extra` more bytes after it, both sides
  are closed: e.g. SMTP dropped after the message's final "." reached the server but before
  its 250 reached the client, or IMAP dropped in the middle of a FETCH literal;
- `cut_before(direction, marker)`: both sides closed just before `marker` would pass (the
  SMTP server queued the message, its "250 ... queued" never reaches the client);
- `cut_after_bytes(direction, n)`: the same after `n` bytes in that direction;
- `blackhole()`: bytes are accepted and never forwarded, nothing is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass
class Fault:
    kind: str  # pass | delay | cut | blackhole
    direction: str = "up"
    marker: bytes = b""
    extra: int = 0
    before: bool = False
    seconds: float = 0.0
    times: int = 1  # how many new connections get it


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port`, with faults on demand."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._faults: list[Fault] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.cuts = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- arming faults ----------------------------------------------------------------------
    def delay(self, seconds: float, times: int = 1) -> None:
        self._faults.append(Fault("delay", seconds=seconds, times=times))

    def cut_after(self, direction: str, marker: bytes, extra: int = 0, times: int = 1) -> None:
        self._faults.append(Fault("cut", direction=direction, marker=marker, extra=extra, times=times))

    def cut_before(self, direction: str, marker: bytes, times: int = 1) -> None:
        self._faults.append(Fault("cut", direction=direction, marker=marker, before=True, times=times))

    def cut_after_bytes(self, direction: str, n: int, times: int = 1) -> None:
        self._faults.append(Fault("cut", direction=direction, extra=n, times=times))

    def blackhole(self, times: int = 1) -> None:
        self._faults.append(Fault("blackhole", times=times))

    def clear(self) -> None:
        self._faults.clear()

    def _next_fault(self) -> Fault:
        if not self._faults:
            return Fault("pass")
        fault = self._faults[0]
        fault.times -= 1
        if fault.times <= 0:
            self._faults.pop(0)
        return fault

    # --- forwarding -------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        fault = self._next_fault()
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if fault.kind == "blackhole":
                with contextlib.suppress(OSError):
                    while await reader.read(65536):
                        pass
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._writers.add(up_writer)
            done = asyncio.Event()
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer, fault, "up", done)),
                asyncio.create_task(self._pump(up_reader, writer, fault, "down", done)),
            ]
            await done.wait()
            for pump in pumps:
                pump.cancel()
            for pump in pumps:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            up_writer.close()
            self._writers.discard(up_writer)
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        fault: Fault,
        direction: str,
        done: asyncio.Event,
    ) -> None:
        cutting = fault.kind == "cut" and fault.direction == direction
        seen = b""  # a tail of what passed, to find a marker split across chunks
        armed = cutting and not fault.marker  # byte count from the start
        left = fault.extra
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                if fault.kind == "delay":
                    await asyncio.sleep(fault.seconds)
                if cutting:
                    if not armed:
                        window = seen + chunk
                        at = window.find(fault.marker)
                        if at < 0:
                            seen = window[-len(fault.marker) :]
                            writer.write(chunk)
                            await writer.drain()
                            continue
                        armed = True
                        end_in_chunk = at + len(fault.marker) - len(seen)
                        if fault.before:
                            writer.write(chunk[: max(0, at - len(seen))])
                            await writer.drain()
                            self.cuts += 1
                            return
                        head, chunk = chunk[:end_in_chunk], chunk[end_in_chunk:]
                        writer.write(head)
                    if len(chunk) >= left:
                        writer.write(chunk[:left])
                        await writer.drain()
                        self.cuts += 1
                        return
                    left -= len(chunk)
                writer.write(chunk)
                await writer.drain()
        except (OSError, ConnectionError):
            return
        finally:
            done.set()
