"""Shared KPI test data."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

KYIV = ZoneInfo("Europe/Kyiv")

#: Both DST changes of 2026 in Kyiv, with moments just either side of local midnights.
KYIV_DST_2026_MOMENTS = [
    datetime(2026, 3, 28, 23, 59, tzinfo=KYIV),
    datetime(2026, 3, 29, 0, 1, tzinfo=KYIV),
    datetime(2026, 3, 29, 23, 59, tzinfo=KYIV),
    datetime(2026, 10, 25, 0, 1, tzinfo=KYIV),
    datetime(2026, 10, 25, 23, 59, tzinfo=KYIV),
    datetime(2026, 10, 26, 0, 1, tzinfo=KYIV),
]
