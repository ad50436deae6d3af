"""The contact clock's calendar: 5 working days, Monday to Friday minus Dutch public holidays."""

from datetime import date, datetime, time, timedelta

import pytest

from services.infra.settings import Settings
from services.notifier.calendar import AMSTERDAM, GoodFriday, LiberationDay, WorkingCalendar


def local(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=AMSTERDAM)


@pytest.mark.parametrize(("start", "due", "why"), [
    (local(2026, 3, 9, 10), local(2026, 3, 16, 10), "Monday to Monday: the weekend does not count"),
    (local(2026, 3, 13, 15), local(2026, 3, 20, 15), "a clock started on a Friday afternoon"),
    (local(2026, 3, 14, 11), local(2026, 3, 21, 0), "started on Saturday: counts from Monday 00:00"),
    (local(2025, 12, 24, 10), local(2026, 1, 5, 10), "Christmas, the weekend and New Year's Day"),
    (local(2025, 4, 25, 10), local(2025, 5, 2, 10), "King's Day on Sunday 27 April 2025 moved to Saturday 26"),
    (local(2026, 4, 24, 10), local(2026, 5, 4, 10), "King's Day 2026 on Monday 27 April does not count"),
    (local(2026, 5, 12, 9), local(2026, 5, 20, 9), "Ascension Day (Thursday 14 May 2026)"),
    (local(2026, 5, 22, 9), local(2026, 6, 1, 9), "Whit Monday (25 May 2026)"),
    (local(2025, 5, 2, 9), local(2025, 5, 12, 9), "Liberation Day 2025 (a lustrum year) is a day off"),
    (local(2026, 5, 4, 9), local(2026, 5, 11, 9), "Liberation Day 2026 is a working day"),
    (local(2023, 3, 31, 9), local(2023, 4, 7, 9), "Good Friday (7 April 2023) is a working day"),
])
def test_five_working_days(start: datetime, due: datetime, why: str) -> None:
    assert WorkingCalendar().add_working_days(start, 5) == due, why


def test_kings_day_on_a_sunday_is_celebrated_on_saturday_26_april() -> None:
    calendar = WorkingCalendar()
    assert not calendar.is_working_day(date(2026, 4, 27))  # a Monday, King's Day
    assert calendar.is_working_day(date(2025, 4, 28))  # the Monday after King's Day on Saturday
    assert date(2025, 4, 26) in __import__("holidays").country_holidays("NL", years=2025)


@pytest.mark.parametrize(("setting", "start", "due"), [
    (LiberationDay.ALWAYS, local(2026, 5, 4, 9), local(2026, 5, 12, 9)),
    (LiberationDay.NEVER, local(2025, 5, 2, 9), local(2025, 5, 9, 9)),
])
def test_liberation_day_is_configurable(setting: LiberationDay, start: datetime, due: datetime) -> None:
    assert WorkingCalendar(setting).add_working_days(start, 5) == due


def test_one_working_day_left_is_the_day_before_the_deadline() -> None:
    calendar, start = WorkingCalendar(), local(2026, 3, 13, 15)
    assert calendar.add_working_days(start, 4) == local(2026, 3, 19, 15)


def test_the_deadline_is_in_utc_and_keeps_the_local_wall_clock_across_summer_time_and_easter() -> None:
    # clocks go forward on 29 March 2026; Easter Monday (6 April) is a holiday, Good Friday (3 April) is not
    due = WorkingCalendar().add_working_days(local(2026, 3, 27, 10), 5)
    assert due == local(2026, 4, 3, 10) and due.utcoffset().total_seconds() == 0
    due = WorkingCalendar().add_working_days(local(2026, 3, 30, 10), 5)
    assert due == local(2026, 4, 7, 10) and due.utcoffset().total_seconds() == 0


GOOD_FRIDAYS = [date(2023, 4, 7), date(2024, 3, 29), date(2025, 4, 18), date(2026, 4, 3), date(2027, 3, 26),
                date(2028, 4, 14), date(2029, 3, 30), date(2030, 4, 19)]
"""Written out from a published Easter table, as an independent check of the computed dates."""


def at_nine(day: date) -> datetime:
    return datetime.combine(day, time(9), AMSTERDAM)


@pytest.mark.parametrize("friday", GOOD_FRIDAYS, ids=lambda day: str(day.year))
def test_good_friday_is_a_working_day_by_default(friday: date) -> None:
    """Algemene termijnenwet art. 3 does not list Good Friday: a clock started a week before ends on it."""
    start = friday - timedelta(days=7)
    assert WorkingCalendar().is_working_day(friday)
    assert not WorkingCalendar().is_working_day(friday + timedelta(days=3))  # Easter Monday
    assert WorkingCalendar().add_working_days(at_nine(start), 5) == at_nine(friday)


@pytest.mark.parametrize("friday", GOOD_FRIDAYS, ids=lambda day: str(day.year))
def test_good_friday_as_a_holiday_moves_the_deadline_past_easter_monday(friday: date) -> None:
    calendar = WorkingCalendar(good_friday=GoodFriday.HOLIDAY)
    assert not calendar.is_working_day(friday)
    tuesday = friday + timedelta(days=4)
    assert calendar.add_working_days(at_nine(friday - timedelta(days=7)), 5) == at_nine(tuesday)


def test_the_good_friday_setting_defaults_to_working(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().good_friday == "working"
    monkeypatch.setenv("VERWIJSHUB_GOOD_FRIDAY", "holiday")
    assert GoodFriday(Settings().good_friday) is GoodFriday.HOLIDAY
