"""Business-day arithmetic for due dates and seat risk (weekends and closed days skipped)."""
from __future__ import annotations

import datetime as dt
from collections.abc import Collection


def is_business_day(day: dt.date, closed: Collection[dt.date] = ()) -> bool:
    return day.weekday() < 5 and day not in closed


def add_business_days(start: dt.date, days: int, closed: Collection[dt.date] = ()) -> dt.date:
    """The date `days` business days after `start` (negative goes back). 0 rolls forward to a
    business day."""
    step = 1 if days >= 0 else -1
    day = start
    remaining = abs(days)
    while remaining:
        day += dt.timedelta(days=step)
        if is_business_day(day, closed):
            remaining -= 1
    while not is_business_day(day, closed):
        day += dt.timedelta(days=step)
    return day


def latest_safe_date(seat: dt.date, buffer_days: int, closed: Collection[dt.date] = ()) -> dt.date:
    """The last day the work may arrive and still leave `buffer_days` business days before the seat."""
    return add_business_days(seat, -buffer_days, closed)
