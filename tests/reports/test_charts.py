"""Chart geometry: round axes, bars in proportion to their figures, nothing drawn for no data."""
from __future__ import annotations

import datetime as dt

import pytest

from portal.reports import charts
from portal.reports.services import Figures, ReportFilters, summarise


@pytest.mark.parametrize(("value", "top", "step"), [
    (37, 40, 10), (10.2, 15, 5), (9.1, 10, 2.5), (4, 4, 1), (2, 2, 1), (100, 100, 25),
    (7.4, 8, 2), (0, 1, 1), (1234, 1500, 500),
])
def test_nice_max_gives_a_round_axis(value, top, step):
    assert charts.nice_max(value) == (pytest.approx(top), pytest.approx(step))
    assert charts.nice_max(value)[0] >= value


def _figures(label, median, p90, count=4, link=None):
    return Figures(label=label, link=link, cases=count, receive_median=median, receive_p90=p90, receive_count=count)


def test_turnaround_bars_run_to_the_median_then_to_the_90th_percentile():
    chart = charts.turnaround([_figures("Quick Lab", 4, 6, link={"lab": 1}), _figures("Slow Lab", 8, 10)],
                              "t", "lab")
    quick, slow = chart.marks
    median, spread = quick.rects
    assert (median.css, spread.css) == ("bar", "bar-soft")
    assert spread.x == pytest.approx(median.x + median.width)
    assert (median.width + spread.width) / median.width == pytest.approx(6 / 4)
    assert slow.rects[0].width / median.width == pytest.approx(8 / 4)
    assert quick.link == {"lab": 1} and slow.link is None
    assert "Quick Lab median 4, 90th percentile 6" in chart.desc
    assert [t.text for t in chart.ticks] == ["0", "2.5", "5", "7.5", "10"]


def test_no_chart_is_drawn_without_figures_to_draw():
    nothing_back = [_figures("Lab", None, None, count=0)]
    assert charts.turnaround(nothing_back, "t", "lab") is None
    assert charts.on_time(nothing_back, "t", "lab") is None
    empty = summarise([], ReportFilters(dt.date(2031, 1, 1), dt.date(2031, 3, 31)))
    assert empty.empty and charts.for_report(empty) == {}
    assert charts.remakes(empty) is None


def test_long_ranges_label_fewer_months():
    report = summarise([], ReportFilters(dt.date(2029, 1, 1), dt.date(2031, 12, 31)))
    labels = [m.texts[-1].text for m in charts.cases_per_month(report).marks]
    assert len(labels) == 36 and labels[:4] == ["Jan ’29", "", "", "Apr ’29"]
