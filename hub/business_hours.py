"""Business-hours calendar: weekly windows in a time zone, minus holidays.

Working time is real elapsed time inside the windows, so a window that spans a DST change
counts the hour the clocks skipped or repeated exactly as a stopwatch would. `add` returns
the earliest instant at which the requested working time has accumulated, which makes it
additive (`add(add(s, a), b) == add(s, a + b)`) and monotonic in `s`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import holidays as holidays_lib

from hub.config import CalendarSettings, ConfigError

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
#: A calendar with no working time in this many days after a start is a config bug.
_MAX_DAYS = 3 * 366

Window = tuple[int, int]  # minutes from local midnight: [start, end), end may be 1440


def _parse_days(spec: str, key: str) -> list[int]:
    """`mon-fri`, `sat`, `mon,wed,fri`, `daily` -> weekday numbers (Monday = 0)."""
    spec = spec.strip().lower()
    if spec in ("daily", "every day", "mon-sun"):
        return list(range(7))
    days: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            first, _, last = part.partition("-")
            if first.strip() not in _DAYS or last.strip() not in _DAYS:
                raise ConfigError(f"{key}: unknown day range {part!r} (use e.g. mon-fri)")
            a, b = _DAYS.index(first.strip()), _DAYS.index(last.strip())
            if b < a:
                raise ConfigError(f"{key}: day range {part!r} runs backwards")
            days.extend(range(a, b + 1))
        elif part in _DAYS:
            days.append(_DAYS.index(part))
        else:
            raise ConfigError(f"{key}: unknown day {part!r} (use mon, tue, ..., sun or mon-fri)")
    return days


def _parse_window(text: Any, key: str) -> Window:
    match = _WINDOW.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"{key}: {text!r} is not a time window like 09:00-18:00")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60:
        raise ConfigError(f"{key}: {text!r} is not a valid time of day (00:00-24:00)")
    if end <= start:
        raise ConfigError(
            f"{key}: window {text!r} ends before it starts (split a night shift at 24:00, "
            "e.g. 22:00-24:00 and 00:00-06:00 on the next day)"
        )
    return start, end


def parse_weekly_hours(hours: str | dict[str, list[str]], key: str) -> tuple[tuple[Window, ...], ...]:
    """Config `hours` -> windows for each weekday (Monday first); names the key on error."""
    if isinstance(hours, str):
        if hours.strip().lower() == "24x7":
            return tuple(((0, 24 * 60),) for _ in range(7))
        raise ConfigError(f"{key}: {hours!r} is not '24x7' or a mapping such as {{mon-fri: ['09:00-18:00']}}")
    week: list[list[Window] | None] = [None] * 7
    for days_spec, windows in hours.items():
        day_key = f"{key}.{days_spec}"
        if isinstance(windows, str):
            windows = [windows]
        if not isinstance(windows, list):
            raise ConfigError(f"{day_key}: give a list of windows like ['09:00-13:00', '14:00-18:00']")
        parsed = sorted(_parse_window(w, day_key) for w in windows)
        for (_, end), (start, _) in pairwise(parsed):
            if start < end:
                raise ConfigError(f"{day_key}: windows overlap")
        for day in _parse_days(str(days_spec), day_key):
            if week[day] is not None:
                raise ConfigError(f"{day_key}: {_DAYS[day]} is given hours twice")
            week[day] = parsed
    result = tuple(tuple(day or ()) for day in week)
    if not any(result):
        raise ConfigError(f"{key}: no working hours on any day")
    return result


class BusinessHours:
    """A `hub.calendar.Calendar` over weekly windows in one time zone, minus holidays."""

    def __init__(
        self,
        timezone: str = "Europe/Kyiv",
        week: tuple[tuple[Window, ...], ...] | None = None,
        country: str | None = None,
        subdivision: str | None = None,
        dates: frozenset[date] = frozenset(),
    ) -> None:
        self.tz = ZoneInfo(timezone)
        self.week = week or tuple(((0, 24 * 60),) for _ in range(7))
        self._country = country
        self._subdivision = subdivision
        self._dates = dates
        if not any(self.week):
            raise ConfigError("calendar: no working hours on any day")

    @classmethod
    def from_settings(cls, settings: CalendarSettings, key: str = "sla.calendar") -> BusinessHours:
        """Build from `sla.calendar` (or a manager's working hours); errors name the key."""
        week = parse_weekly_hours(settings.hours, f"{key}.hours")
        country, subdivision, dates = parse_holidays(settings.holidays, f"{key}.holidays")
        return cls(settings.timezone, week, country, subdivision, dates)

    # --- what is a working day --------------------------------------------------------------
    def is_holiday(self, day: date) -> bool:
        """True on a configured date or a public holiday of the configured country."""
        if day in self._dates:
            return True
        if self._country is None:
            return False
        return day in _country_holidays(self._country, self._subdivision, day.year)

    def _local_intervals(self, day: date) -> list[tuple[datetime, datetime]]:
        """The day's windows as aware UTC instants (empty on holidays)."""
        if self.is_holiday(day):
            return []
        out: list[tuple[datetime, datetime]] = []
        for start_min, end_min in self.week[day.weekday()]:
            start = _at(day, start_min, self.tz)
            end = _at(day, end_min, self.tz)
            # Wall-clock bounds map to instants; the UTC difference is the real working time.
            start, end = start.astimezone(UTC), end.astimezone(UTC)
            if end > start:
                out.append((start, end))
        return out

    def _intervals_from(self, instant: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Working intervals that end after `instant`, in order, clipped to start at it."""
        day = instant.astimezone(self.tz).date() - timedelta(days=1)
        empty_days = 0
        while True:
            intervals = self._local_intervals(day)
            empty_days = 0 if intervals else empty_days + 1
            if empty_days > _MAX_DAYS:
                raise ValueError(f"calendar has no working time within {_MAX_DAYS} days after {instant}")
            for start, end in intervals:
                if end <= instant:
                    continue
                yield max(start, instant), end
            day += timedelta(days=1)

    # --- the Calendar protocol --------------------------------------------------------------
    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The earliest instant at which `duration` of working time has passed after `start`."""
        _require_aware(start)
        if duration <= timedelta(0):
            return start
        left = duration
        for begin, end in self._intervals_from(start):
            span = end - begin
            if left <= span:
                return (begin + left).astimezone(start.tzinfo)
            left -= span
        raise AssertionError("unreachable: _intervals_from never ends")  # pragma: no cover

    def working_time_between(self, start: datetime, end: datetime) -> timedelta:
        """Working time inside [start, end] (0 when end <= start)."""
        _require_aware(start)
        _require_aware(end)
        total = timedelta(0)
        if end <= start:
            return total
        for begin, stop in self._intervals_from(start):
            if begin >= end:
                break
            total += min(stop, end) - begin
        return total

    def is_on_shift(self, instant: datetime) -> bool:
        """True when `instant` lies inside a window, start included and end excluded."""
        day = instant.astimezone(self.tz).date()
        for d in (day - timedelta(days=1), day):
            for begin, end in self._local_intervals(d):
                if begin <= instant < end:
                    return True
        return False

    def is_working(self, instant: datetime) -> bool:
        """True when `instant` lies inside a working window (window end included)."""
        day = instant.astimezone(self.tz).date()
        for d in (day - timedelta(days=1), day):
            for begin, end in self._local_intervals(d):
                if begin <= instant <= end:
                    return True
        return False


def _at(day: date, minutes: int, tz: ZoneInfo) -> datetime:
    """Local wall-clock time on `day` (24:00 = next midnight) as an aware datetime."""
    if minutes >= 24 * 60:
        return datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    return datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=tz)


def _require_aware(value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"calendar arithmetic needs an aware datetime, got {value!r}")


@lru_cache(maxsize=64)
def _country_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    return frozenset(holidays_lib.country_holidays(country, subdiv=subdivision, years=year).keys())


def parse_holidays(raw: dict[str, Any], key: str) -> tuple[str | None, str | None, frozenset[date]]:
    """`{country: UA, subdivision: ..., dates: [2026-12-25, ...]}` -> checked parts."""
    unknown = sorted(set(raw) - {"country", "subdivision", "dates"})
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(unknown)} (use country, subdivision, dates)")
    country = raw.get("country")
    subdivision = raw.get("subdivision")
    if subdivision is not None:
        subdivision = str(subdivision)
        if country is None:
            raise ConfigError(f"{key}.subdivision: needs a country (e.g. country: UA)")
    if country is not None:
        country = str(country).upper()
        try:
            known = holidays_lib.country_holidays(country, years=2026)
        except NotImplementedError as exc:
            raise ConfigError(
                f"{key}.country: {country!r} is not a country the holidays package knows"
            ) from exc
        if subdivision is not None:
            try:
                holidays_lib.country_holidays(country, subdiv=subdivision, years=2026)
            except (NotImplementedError, ValueError) as exc:
                choices = ", ".join(sorted(known.subdivisions)) or "none"
                raise ConfigError(
                    f"{key}.subdivision: {subdivision!r} is not a subdivision of {country} "
                    f"the holidays package knows (known: {choices})"
                ) from exc
    raw_dates = raw.get("dates")
    if raw_dates is None:
        raw_dates = []
    if not isinstance(raw_dates, list):
        raise ConfigError(f"{key}.dates: {raw_dates!r} is not a list of dates like [2026-12-25, 2026-12-31]")
    dates: set[date] = set()
    for i, item in enumerate(raw_dates):
        if isinstance(item, datetime):
            dates.add(item.date())
        elif isinstance(item, date):
            dates.add(item)
        else:
            try:
                dates.add(date.fromisoformat(str(item)))
            except ValueError as exc:
                raise ConfigError(f"{key}.dates[{i}]: {item!r} is not a date like 2026-12-25") from exc
    return country, subdivision, frozenset(dates)
