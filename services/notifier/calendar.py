"""Working days for the contact promise: Monday to Friday minus Dutch public holidays.

The holidays are those of the Algemene termijnenwet (art. 3), by which Dutch public bodies count
deadlines: New Year, Easter Monday, King's Day (moved to Saturday when 27 April is a Sunday), Ascension,
Whit Monday, Christmas, Boxing Day and Liberation Day. The dates come from the `holidays` library, which
also lists Good Friday for NL; that law does not, so Good Friday is a working day unless set otherwise
(`VERWIJSHUB_GOOD_FRIDAY=holiday`, for teams whose collective agreement gives it off). Liberation Day is
a policy choice too, because collective labour agreements differ: by default a day off in lustrum years
(2025, 2030) as the library has it, or every year, or never (setting `VERWIJSHUB_LIBERATION_DAY`).

Time is counted in local Dutch time: a working day counts from midnight to midnight, weekend and
holiday hours do not count at all. So 5 working days from Friday 15:00 end next Friday 15:00, and a
clock started on Saturday runs from Monday 00:00.
"""

from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays
from dateutil.easter import easter

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
LIBERATION_DAY = (5, 5)


class LiberationDay(StrEnum):
    LUSTRUM = "lustrum"
    ALWAYS = "always"
    NEVER = "never"


class GoodFriday(StrEnum):
    WORKING = "working"
    HOLIDAY = "holiday"


def good_friday(year: int) -> date:
    return easter(year) - timedelta(days=2)


@lru_cache(maxsize=64)
def _public_holidays(year: int, liberation: LiberationDay, friday: GoodFriday) -> frozenset[date]:
    days = set(holidays.country_holidays("NL", years=year))
    liberation_day = date(year, *LIBERATION_DAY)
    if liberation is LiberationDay.ALWAYS:
        days.add(liberation_day)
    elif liberation is LiberationDay.NEVER:
        days.discard(liberation_day)
    if friday is GoodFriday.HOLIDAY:
        days.add(good_friday(year))
    else:
        days.discard(good_friday(year))
    return frozenset(days)


class WorkingCalendar:
    def __init__(self, liberation: LiberationDay = LiberationDay.LUSTRUM,
                 good_friday: GoodFriday = GoodFriday.WORKING) -> None:
        self.liberation, self.good_friday = liberation, good_friday

    def is_working_day(self, day: date) -> bool:
        return day.weekday() < 5 and day not in _public_holidays(day.year, self.liberation, self.good_friday)

    def add_working_days(self, start: datetime, days: float) -> datetime:
        """The moment `days` working days of time after `start` (aware), in UTC."""
        remaining = timedelta(days=days)
        cursor = start.astimezone(AMSTERDAM).replace(tzinfo=None)  # wall-clock time: a day is midnight to midnight
        while True:
            midnight = datetime.combine(cursor.date() + timedelta(days=1), time())
            if self.is_working_day(cursor.date()):
                if remaining <= midnight - cursor:
                    return (cursor + remaining).replace(tzinfo=AMSTERDAM).astimezone(UTC)
                remaining -= midnight - cursor
            cursor = midnight

    def working_days_between(self, start: datetime, end: datetime) -> float:
        """The working time from `start` to `end` (aware) in working days, counted as `add_working_days` counts
        it (the hours of working days in Dutch local time); 0 when `end` is not after `start`."""
        cursor = start.astimezone(AMSTERDAM).replace(tzinfo=None)
        stop = end.astimezone(AMSTERDAM).replace(tzinfo=None)
        worked = timedelta()
        while cursor < stop:
            midnight = datetime.combine(cursor.date() + timedelta(days=1), time())
            if self.is_working_day(cursor.date()):
                worked += min(midnight, stop) - cursor
            cursor = midnight
        return worked / timedelta(days=1)
