"""Business-hours arithmetic: examples from the issue plus properties checked by hypothesis."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.business_hours import BusinessHours
from hub.config import CalendarSettings, ConfigError

KYIV = ZoneInfo("Europe/Kyiv")


def calendar(hours: object = None, **holidays: object) -> BusinessHours:
    return BusinessHours.from_settings(
        CalendarSettings(
            timezone="Europe/Kyiv",
            hours=hours or {"mon-fri": ["09:00-13:00", "14:00-18:00"]},
            holidays=dict(holidays),
        )
    )


OFFICE = calendar({"mon-fri": ["09:00-18:00"]})
SPLIT = calendar()
# Night shifts around the DST switch (03:00/04:00 local), on weekends too, plus a holiday.
NIGHTS = calendar(
    {"mon-sun": ["00:00-05:00", "22:00-24:00"]},
    dates=["2026-03-30"],
)
WITH_HOLIDAYS = calendar({"mon-fri": ["09:00-18:00"]}, country="PL", dates=["2026-12-31"])
CALENDARS = [OFFICE, SPLIT, NIGHTS, WITH_HOLIDAYS]


def kyiv(*args: int) -> datetime:
    return datetime(*args, tzinfo=KYIV)  # type: ignore[arg-type,misc]


def test_friday_1730_plus_4h_in_office_hours_is_monday_1230() -> None:
    assert OFFICE.add(kyiv(2026, 11, 20, 17, 30), timedelta(hours=4)) == kyiv(2026, 11, 23, 12, 30)


def test_lunch_break_is_skipped() -> None:
    assert SPLIT.add(kyiv(2026, 11, 23, 12, 0), timedelta(hours=2)) == kyiv(2026, 11, 23, 15, 0)


def test_message_outside_hours_starts_counting_at_opening() -> None:
    assert SPLIT.add(kyiv(2026, 11, 21, 23, 0), timedelta(minutes=30)) == kyiv(2026, 11, 23, 9, 30)


def test_explicit_and_country_holidays_are_closed() -> None:
    # 2026-12-24/25/26 are Polish public holidays (24th since 2025), 31st is configured.
    start = kyiv(2026, 12, 23, 17, 0)
    assert WITH_HOLIDAYS.add(start, timedelta(hours=2)) == kyiv(2026, 12, 28, 10, 0)
    assert WITH_HOLIDAYS.add(kyiv(2026, 12, 30, 17, 0), timedelta(hours=2)) == kyiv(2027, 1, 4, 10, 0)


def test_dst_spring_forward_night_counts_real_time() -> None:
    # 2026-03-29 in Kyiv: 03:00 jumps to 04:00, so 00:00-05:00 holds only 4 real hours.
    cal = calendar({"mon-sun": ["00:00-05:00"]})
    start = kyiv(2026, 3, 29, 0, 0)
    assert cal.working_time_between(start, kyiv(2026, 3, 29, 5, 0)) == timedelta(hours=4)
    assert cal.add(start, timedelta(hours=4)) == kyiv(2026, 3, 29, 5, 0)


def test_dst_fall_back_night_counts_the_repeated_hour() -> None:
    # 2026-10-25 in Kyiv: 04:00 goes back to 03:00, so 00:00-05:00 holds 6 real hours.
    cal = calendar({"mon-sun": ["00:00-05:00"]})
    start = kyiv(2026, 10, 25, 0, 0)
    assert cal.working_time_between(start, kyiv(2026, 10, 25, 5, 0)) == timedelta(hours=6)
    assert cal.add(start, timedelta(hours=6)) == kyiv(2026, 10, 25, 5, 0)


def test_24x7_with_holidays_skips_whole_days() -> None:
    cal = calendar("24x7", dates=["2026-01-01"])
    assert cal.add(kyiv(2025, 12, 31, 23, 0), timedelta(hours=2)) == kyiv(2026, 1, 2, 1, 0)


@pytest.mark.parametrize(
    ("hours", "holidays", "key"),
    [
        ("9to5", {}, "sla.calendar.hours"),
        ({"mon-fri": ["18:00-09:00"]}, {}, "sla.calendar.hours.mon-fri"),
        ({"mon-fry": ["09:00-18:00"]}, {}, "sla.calendar.hours.mon-fry"),
        ({"mon": ["09:00-12:00", "11:00-13:00"]}, {}, "sla.calendar.hours.mon"),
        ({"mon-fri": ["9am-6pm"]}, {}, "sla.calendar.hours.mon-fri"),
        ({"mon-fri": ["09:00-18:00"]}, {"country": "XX"}, "sla.calendar.holidays.country"),
        ({"mon-fri": ["09:00-18:00"]}, {"dates": ["31.12.2026"]}, "sla.calendar.holidays.dates[0]"),
        ({"mon-fri": ["09:00-18:00"]}, {"region": "x"}, "sla.calendar.holidays"),
    ],
)
def test_config_errors_name_the_key(hours: object, holidays: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        calendar(hours, **holidays)
    assert str(caught.value).startswith(key + ":")


# --- properties ---------------------------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)
durations = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(hours=120))
calendars = st.sampled_from(CALENDARS)

# Instants in the hours around Kyiv's DST switches, where wall-clock arithmetic goes wrong.
dst_days = st.sampled_from([date(2025, 3, 30), date(2025, 10, 26), date(2026, 3, 29), date(2026, 10, 25)])
dst_instants = st.builds(
    lambda day, seconds: datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(seconds=seconds),
    dst_days,
    st.integers(min_value=-6 * 3600, max_value=12 * 3600),
)
any_instant = st.one_of(instants, dst_instants)


@settings(max_examples=150, deadline=None)
@given(calendars, any_instant, any_instant, durations)
def test_due_time_is_monotonic_in_start(cal: BusinessHours, a: datetime, b: datetime, d: timedelta) -> None:
    early, late = sorted((a, b))
    assert cal.add(early, d) <= cal.add(late, d)


@settings(max_examples=150, deadline=None)
@given(calendars, any_instant, durations, durations)
def test_adding_a_then_b_equals_adding_a_plus_b(
    cal: BusinessHours, start: datetime, a: timedelta, b: timedelta
) -> None:
    assert cal.add(cal.add(start, a), b) == cal.add(start, a + b)


@settings(max_examples=150, deadline=None)
@given(calendars, any_instant, durations)
def test_deadline_is_inside_working_time_and_holds_exactly_the_duration(
    cal: BusinessHours, start: datetime, d: timedelta
) -> None:
    due = cal.add(start, d)
    assert due > start
    assert cal.is_working(due)
    assert cal.working_time_between(start, due) == d


@settings(max_examples=100, deadline=None)
@given(dst_instants, st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(hours=30)))
def test_dst_days_in_kyiv_24x7_is_real_elapsed_time(start: datetime, d: timedelta) -> None:
    cal = calendar("24x7")
    assert cal.add(start, d) == start + d
    assert cal.working_time_between(start, start + d) == d
