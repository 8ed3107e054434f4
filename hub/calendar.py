"""Business-time arithmetic for SLA due times.

`Calendar.add(start, duration)` returns the moment when `duration` of working time has
passed after `start`. The 24x7 calendar is plain addition.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol


class Calendar(Protocol):
    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The instant `duration` of working time after `start` (aware datetimes)."""

    def working_time_between(self, start: datetime, end: datetime) -> timedelta:
        """How much working time lies between two instants (0 if end <= start)."""


class AlwaysOpen:
    """24x7: every second counts."""

    def add(self, start: datetime, duration: timedelta) -> datetime:
        return start + duration

    def working_time_between(self, start: datetime, end: datetime) -> timedelta:
        return max(end - start, timedelta(0))
