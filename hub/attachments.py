"""Content-addressed attachment files: `<dir>/<aa>/<sha256>`, written once, never changed.

The name is the hash of the bytes, so writing the same file twice (a redelivered message, the
same logo in a hundred mails) is harmless, and a ref can be computed without touching disk.
File I/O runs in a worker thread so the event loop never blocks on the disk.

It lives in the core because channels write it (email) and others read it (the dashboard, the
staff desk): `Attachment.ref` values of the form `sha256:<hex>` point here.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from pathlib import Path

ATTACHMENT_REF_PREFIX = "sha256:"
_REF = re.compile(r"^sha256:([0-9a-f]{64})$")


def attachment_ref(data: bytes) -> str:
    """The content address of these bytes (`sha256:<hex>`)."""
    return ATTACHMENT_REF_PREFIX + hashlib.sha256(data).hexdigest()


def is_stored_ref(ref: str) -> bool:
    """Whether `ref` names a file of this store (not a Telegram file id, not a dropped file)."""
    return bool(_REF.match(ref))


class AttachmentStore:
    """Files under one directory, named by the SHA-256 of their content."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, ref: str) -> Path:
        """Where the file for `ref` lives (ValueError for a ref that is not ours)."""
        match = _REF.match(ref)
        if not match:
            raise ValueError(f"not an attachment ref: {ref!r}")
        digest = match.group(1)
        return self.root / digest[:2] / digest

    def _write(self, data: bytes) -> str:
        ref = attachment_ref(data)
        target = self.path(ref)
        if target.exists():
            return ref
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary name and rename: a crash never leaves a half file under the hash.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ref

    async def put(self, data: bytes) -> str:
        """Store bytes (idempotent); returns their ref."""
        return await asyncio.to_thread(self._write, data)

    def _existing(self, ref: str) -> Path | None:
        try:
            target = self.path(ref)
        except ValueError:
            return None
        return target if target.is_file() else None

    async def find(self, ref: str) -> Path | None:
        """The file of a stored attachment, or None (a ref that is not ours, a missing file)."""
        return await asyncio.to_thread(self._existing, ref)

    async def get(self, ref: str) -> bytes:
        """The bytes of a stored attachment (FileNotFoundError when missing)."""
        return await asyncio.to_thread(self.path(ref).read_bytes)

    def _remove(self, ref: str) -> bool:
        try:
            self.path(ref).unlink()
        except FileNotFoundError:
            return False
        return True

    async def delete(self, ref: str) -> bool:
        """Remove a stored attachment's file; False when it was already gone. The caller checks
        that no message still names `ref`: identical files are shared."""
        return await asyncio.to_thread(self._remove, ref)
