"""`python -m hub` is the same as the `hub` command."""

from __future__ import annotations

import sys

from hub.cli import main

if __name__ == "__main__":  # not when a spawned helper process (email parse worker) imports it
    sys.exit(main())
