"""Business-hours calendar (weekly windows, holidays, time zone). Filled in by the SLA work."""

from __future__ import annotations

from hub.calendar import AlwaysOpen
from hub.config import CalendarSettings, ConfigError


class BusinessHours(AlwaysOpen):
    """Placeholder: refuses anything but 24x7 until business hours land."""

    @classmethod
    def from_settings(cls, settings: CalendarSettings) -> BusinessHours:
        raise ConfigError("sla.calendar.hours: only 24x7 is supported in this build")
