"""The arithmetic under the reports: percentiles by linear interpolation and business-day spans."""
from __future__ import annotations

import datetime as dt
import statistics

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from portal.cases.duedates import add_business_days, is_business_day
from portal.reports.stats import business_days_between, median, percentile

MON = dt.date(2031, 3, 3)


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([1, 2, 3, 4], 0.5, 2.5),  # an even count: the mean of the two middle values
    ([1, 2, 3, 4], 0.9, 3.7),  # rank (4 - 1) * 0.9 = 2.7: 3 + 0.7 * (4 - 3)
    ([4, 5, 6, 8], 0.9, 7.4),  # 6 + 0.7 * (8 - 6)
    ([5, 7], 0.9, 6.8),
    ([3, 1, 2], 0.5, 2),  # unsorted input; an odd count: the middle value
    ([7], 0.5, 7), ([7], 0.9, 7),  # one value is its own median and 90th percentile
    ([2, 2, 2, 9], 0.5, 2),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9, 9.1),
    ([10, 20], 0.0, 10), ([10, 20], 1.0, 20),
])
def test_percentile_by_linear_interpolation(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_no_values_have_no_percentile():
    assert percentile([], 0.9) is None and median([]) is None


def test_q_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError):
        percentile([1, 2], 1.5)


@given(st.lists(st.integers(0, 60), min_size=2, max_size=60))
def test_percentiles_match_pythons_inclusive_quantiles(values):
    """Hyndman and Fan type 7, as documented: the same as statistics.quantiles(method='inclusive')."""
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    assert percentile(values, 0.9) == pytest.approx(deciles[8])
    assert median(values) == pytest.approx(statistics.median(values))


@pytest.mark.parametrize(("start", "end", "expected"), [
    (MON, MON, 0),
    (MON, MON + dt.timedelta(days=1), 1),
    (MON, MON + dt.timedelta(days=4), 4),  # Monday to Friday
    (MON, MON + dt.timedelta(days=7), 5),  # Monday to the next Monday
    (MON + dt.timedelta(days=4), MON + dt.timedelta(days=7), 1),  # Friday to Monday
    (MON + dt.timedelta(days=4), MON + dt.timedelta(days=5), 0),  # Friday to Saturday
    (MON + dt.timedelta(days=5), MON + dt.timedelta(days=7), 1),  # sent on a Saturday
])
def test_business_days_between(start, end, expected):
    assert business_days_between(start, end) == expected


def test_closed_days_are_skipped_and_a_backwards_span_has_no_length():
    wednesday = MON + dt.timedelta(days=2)
    assert business_days_between(MON, MON + dt.timedelta(days=4), {wednesday}) == 3
    assert business_days_between(MON + dt.timedelta(days=1), MON) is None


@given(st.dates(dt.date(2020, 1, 1), dt.date(2035, 1, 1)), st.integers(0, 40),
       st.sets(st.dates(dt.date(2020, 1, 1), dt.date(2035, 3, 1)), max_size=20))
def test_business_days_between_undoes_add_business_days(start, days, closed):
    """From a business day (add_business_days rolls a weekend start forward first)."""
    assume(is_business_day(start, closed))
    assert business_days_between(start, add_business_days(start, days, closed), closed) == days
