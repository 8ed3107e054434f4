"""A throwaway self-signed certificate for loopback TLS servers in tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def self_signed_certificate(directory: Path, name: str = "server") -> tuple[Path, Path] | None:
    """(cert.pem, key.pem) for CN=127.0.0.1 in `directory`, or None when openssl is missing."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        [openssl, *request, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
