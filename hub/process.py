"""How a hub process runs: which event loop drives it and which CPUs its threads may use."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hub.config import ConfigError, ProcessSettings

_T = TypeVar("_T")

#: The CPUs this process could use before `pin_to_cpus` narrowed them (None: never pinned).
_allowed_at_start: frozenset[int] | None = None


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop constructor for `process.event_loop` (None: asyncio's default)."""
    if name == "asyncio":
        return None
    if name == "uvloop":
        import uvloop  # a dependency; imported here so that asyncio-only runs never load it

        return uvloop.new_event_loop
    raise ConfigError(f"process.event_loop: unknown event loop {name!r} (use uvloop or asyncio)")


def check_cpus(cpus: Collection[int]) -> set[int]:
    """The CPUs this process may use; a ConfigError naming `process.cpus` when `cpus` (not
    empty) cannot be had here. `hub check-config` and `hub run` both ask."""
    if not cpus:
        return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("process.cpus: this system cannot pin a process to CPUs; leave it empty")
    allowed = os.sched_getaffinity(0)
    missing = sorted(set(cpus) - allowed)
    if missing:
        raise ConfigError(
            f"process.cpus: CPU {', '.join(map(str, missing))} is not available to this process "
            f"(it may use {', '.join(map(str, sorted(allowed)))})"
        )
    return allowed


def pin_to_cpus(cpus: Collection[int]) -> None:
    """Keep every thread of this process, and those it starts later, on `cpus` (empty: no-op)."""
    if not cpus:
        return
    allowed = check_cpus(cpus)
    global _allowed_at_start
    if _allowed_at_start is None:
        _allowed_at_start = frozenset(allowed)
    wanted = set(cpus)
    # sched_setaffinity(0) moves only the calling thread: move any thread already running too.
    tasks = Path("/proc/self/task")
    threads = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
    for tid in threads:
        try:
            os.sched_setaffinity(tid, wanted)
        except ProcessLookupError:
            continue  # that thread ended meanwhile


def spare_cpus() -> set[int]:
    """CPUs for helper processes: those this process could use before pinning, minus its own
    (all of them when nothing is left over, or when it was never pinned)."""
    if not hasattr(os, "sched_getaffinity"):
        return set()
    own = os.sched_getaffinity(0)
    before = set(_allowed_at_start or own)
    return (before - own) or before


def run(main: Coroutine[Any, Any, _T], settings: ProcessSettings) -> _T:
    """Run `main` to completion on the configured CPUs and event loop."""
    try:
        pin_to_cpus(settings.cpus)
        factory = loop_factory(settings.event_loop)
    except ConfigError:
        main.close()  # never awaited: say so quietly instead of a RuntimeWarning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
