"""The arithmetic behind the reports: percentiles and business-day spans, pure and tested.

Percentiles use linear interpolation between the closest ranks: for n sorted values and a
fraction q, the rank is h = (n - 1) * q (counting from 0) and the result is
v[floor(h)] + (h - floor(h)) * (v[floor(h) + 1] - v[floor(h)]). This is Hyndman and Fan's
type 7, the method of Excel's PERCENTILE.INC, NumPy's default and Python's
``statistics.quantiles(method="inclusive")``; its q = 0.5 is the ordinary median (the mean of the
two middle values for an even count). A single value is its own median and 90th percentile.
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Collection, Sequence

from portal.cases.duedates import is_business_day


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0 <= q <= 1) of `values` by linear interpolation; None for no values."""
    if not 0 <= q <= 1:
        raise ValueError("q must be between 0 and 1")
    ordered = sorted(values)
    if not ordered:
        return None
    h = (len(ordered) - 1) * q
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 0.5)


def business_days_between(start: dt.date, end: dt.date, closed: Collection[dt.date] = ()) -> int | None:
    """Business days from `start` to `end`: the weekdays after `start`, up to and including `end`,
    that are not closed days. The inverse of ``add_business_days``: sent on a Friday and
    dispatched the next Monday is 1; the same day is 0. None when `end` is before `start`."""
    if end < start:
        return None
    days = 0
    day = start
    while day < end:
        day += dt.timedelta(days=1)
        if is_business_day(day, closed):
            days += 1
    return days
