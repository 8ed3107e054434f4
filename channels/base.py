"""What a channel plugs into the hub: lifecycle, raw-input decoders, a sender, web routes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hub.app import Hub


class Channel(Protocol):
    """A channel adapter. `attach` registers its parts; `start`/`stop` run its connections."""

    name: str

    def attach(self, hub: Hub) -> None:
        """Register decoders, senders, web routes and event subscribers on the hub."""

    async def start(self) -> None:
        """Open connections and start receiving (called after the store is open)."""

    async def stop(self) -> None:
        """Stop receiving; in-flight input stays safely redeliverable."""
