"""Charts as plain geometry, drawn as inline SVG by templates/reports/_charts.html.

No JavaScript and nothing from another site: the server works out every rectangle and label
here, where it can be tested, and the template only writes them out. Colours come from CSS
classes in static/app.css (the CSP allows no inline styles). Each chart carries a title and a
one-sentence description for assistive technology; the table under it holds the same figures
and the same links.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from portal.reports.services import Figures, Report, days, percent

WIDTH = 720  # a chart on its own
HALF = 520  # one of a pair side by side


@dataclass
class Text:
    x: float
    y: float
    text: str
    anchor: str = "start"
    css: str = ""


@dataclass
class Rect:
    x: float
    y: float
    width: float
    height: float
    css: str


@dataclass
class Mark:
    """One linked group: a bar (or a row of bars) with its labels, and what it stands for."""

    title: str  # the tooltip, and the figure in words
    link: dict | None
    rects: list[Rect] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)


@dataclass
class Chart:
    key: str
    title: str
    desc: str
    height: float
    marks: list[Mark]
    grid: list[tuple[float, float, float, float]]
    ticks: list[Text]
    legend: list[tuple[str, str]] = field(default_factory=list)  # (css class, label)
    width: float = WIDTH


def nice_max(value: float, ticks: int = 4) -> tuple[float, float]:
    """A round top for an axis that holds `value`, and the step between its ticks (1, 2, 2.5 or 5
    times a power of ten)."""
    if value <= 0:
        return 1.0, 1.0
    raw = value / ticks
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if step < 1 and value >= 1:
        step = 1.0
    return math.ceil(value / step - 1e-9) * step, step


def _fmt(value: float) -> str:
    return f"{value:g}"


def _cases(n: int) -> str:
    return f"{n} case" if n == 1 else f"{n} cases"


def _shorten(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@dataclass
class Column:
    """One vertical bar: its value, optionally stretched to `upper` in a lighter shade."""

    label: str  # under the bar
    value: float
    text: str  # above the bar
    link: dict | None
    tooltip: str
    upper: float | None = None


def columns(key: str, title: str, desc: str, bars: list[Column], height: float = 210, width: float = HALF,
            legend: list[tuple[str, str]] | None = None) -> Chart:
    """Vertical bars, one per month."""
    left, right, top, bottom = 34, 6, 18, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value, step = nice_max(max((max(b.value, b.upper or 0) for b in bars), default=0))
    grid, ticks = [], []
    value = 0.0
    while value <= top_value + 1e-9:
        y = top + plot_h - value / top_value * plot_h
        grid.append((left, y, width - right, y))
        ticks.append(Text(left - 6, y + 4, _fmt(value), "end", "tick"))
        value += step
    slot = plot_w / max(len(bars), 1)
    bar_w = min(slot * 0.62, 56)
    base = top + plot_h
    marks = []
    for n, bar in enumerate(bars):
        centre = left + slot * n + slot / 2
        h = bar.value / top_value * plot_h
        h_upper = max((bar.upper or 0) / top_value * plot_h, h)
        mark = Mark(bar.tooltip, bar.link if bar.value or bar.upper else None)
        if h_upper > h:
            mark.rects.append(Rect(centre - bar_w / 2, base - h_upper, bar_w, h_upper - h, "bar-soft"))
        if h:
            mark.rects.append(Rect(centre - bar_w / 2, base - h, bar_w, h, "bar"))
        mark.texts.append(Text(centre, base - h_upper - 5, bar.text, "middle", "value"))
        mark.texts.append(Text(centre, height - 8, bar.label, "middle", "axis"))
        marks.append(mark)
    return Chart(key, title, desc, height, marks, grid, ticks, legend or [], width)


@dataclass
class Row:
    """One row of a horizontal chart: a label, one or more lanes of segments, a figure at the end."""

    label: str
    lanes: list[list[tuple[float, float, str]]]  # per lane: (start, end, css class)
    text: str
    link: dict | None
    tooltip: str


def rows(key: str, title: str, desc: str, items: list[Row], top_value: float, step: float, unit: str = "",
         legend: list[tuple[str, str]] | None = None, width: float = HALF) -> Chart:
    """Horizontal bars, a row per item (a lab, a service, a reason)."""
    label_w, text_w, top, bottom = 172, 104, 6, 24
    lane_h, lane_gap, row_gap = 14, 3, 12
    x0, plot_w = label_w, width - label_w - text_w
    scale = plot_w / top_value if top_value else 0
    marks, y = [], float(top)
    for item in items:
        lanes = max(len(item.lanes), 1)
        row_h = lanes * lane_h + (lanes - 1) * lane_gap
        mark = Mark(item.tooltip, item.link)
        for n, lane in enumerate(item.lanes):
            lane_y = y + n * (lane_h + lane_gap)
            for start, end, css in lane:
                if end > start:
                    mark.rects.append(Rect(x0 + start * scale, lane_y, (end - start) * scale, lane_h, css))
        mark.texts.append(Text(label_w - 10, y + row_h / 2 + 4, _shorten(item.label, 25), "end", "label"))
        mark.texts.append(Text(x0 + plot_w + 8, y + row_h / 2 + 4, item.text, "start", "value"))
        marks.append(mark)
        y += row_h + row_gap
    plot_bottom = y - row_gap + 4
    grid, ticks = [], []
    value = 0.0
    while value <= top_value + 1e-9:
        x = x0 + value * scale
        grid.append((x, top - 2, x, plot_bottom))
        ticks.append(Text(x, plot_bottom + 14, _fmt(value) + unit, "middle", "tick"))
        value += step
    return Chart(key, title, desc, plot_bottom + bottom, marks, grid, ticks, legend or [], width)


# -- the report's charts ------------------------------------------------------------------------------

def _month_labels(months: list[Figures]) -> list[str]:
    """A label under every bar up to a year, then under every second or third."""
    every = math.ceil(len(months) / 12)
    short = len(months) > 6
    return ["" if n % every else (f"{f.label[:3]} ’{f.label[-2:]}" if short else f.label)
            for n, f in enumerate(months)]


def cases_per_month(report: Report) -> Chart:
    months = report.by_month
    desc = "Cases sent per month: " + "; ".join(f"{f.label} {f.cases}" for f in months) + "."
    return columns("chart-months", "Cases sent per month", desc, [
        Column(label, f.cases, str(f.cases), f.link, f"{f.label}: {_cases(f.cases)} sent")
        for label, f in zip(_month_labels(months), months, strict=True)
    ])


def turnaround_per_month(report: Report) -> Chart | None:
    months = report.by_month
    if not any(f.receive_count for f in months):
        return None
    desc = ("Business days from sent to received, by month sent: " + "; ".join(
        f"{f.label} median {days(f.receive_median)}, 90th percentile {days(f.receive_p90)}"
        if f.receive_count else f"{f.label} none back yet" for f in months) + ".")
    return columns("chart-month-turnaround", "Turnaround per month (sent → received)", desc, [
        Column(label, f.receive_median or 0,
               "" if not f.receive_count else days(f.receive_median) if len(months) > 8
               else f"{days(f.receive_median)} · {days(f.receive_p90)}", f.link,
               f"{f.label}: median {days(f.receive_median)}, 90th percentile {days(f.receive_p90)} business days "
               f"({_cases(f.receive_count)} back)", upper=f.receive_p90)
        for label, f in zip(_month_labels(months), months, strict=True)
    ], legend=[("bar", "Median"), ("bar-soft", "Up to the 90th percentile")])


def turnaround(report_rows: list[Figures], key: str, what: str) -> Chart | None:
    """Median sent -> received as a bar, stretched to the 90th percentile in a lighter shade."""
    shown = [f for f in report_rows if f.receive_count]
    if not shown:
        return None
    top_value, step = nice_max(max(f.receive_p90 for f in shown))
    items = [Row(f.label, [[(0, f.receive_median, "bar"), (f.receive_median, f.receive_p90, "bar-soft")]],
                 f"{days(f.receive_median)} · {days(f.receive_p90)} days", f.link,
                 f"{f.label}: median {days(f.receive_median)}, 90th percentile {days(f.receive_p90)} "
                 f"business days from sent to received ({_cases(f.receive_count)})")
             for f in shown]
    desc = (f"Business days from sent to received, by {what}: "
            + "; ".join(f"{f.label} median {days(f.receive_median)}, 90th percentile {days(f.receive_p90)}"
                        for f in shown) + ".")
    return rows(key, f"Turnaround by {what}", desc, items, top_value, step,
                legend=[("bar", "Median"), ("bar-soft", "Up to the 90th percentile")])


def on_time(report_rows: list[Figures], key: str, what: str) -> Chart | None:
    shown = [f for f in report_rows if f.due_known or f.seat_known]
    if not shown:
        return None
    items = [Row(f.label, [[(0, (f.due_rate or 0) * 100, "bar")], [(0, (f.seat_rate or 0) * 100, "bar-alt")]],
                 f"{percent(f.due_rate)} · {percent(f.seat_rate)}", f.link,
                 f"{f.label}: {percent(f.due_rate)} on time against the due date ({f.due_on_time} of "
                 f"{f.due_known}), {percent(f.seat_rate)} in time for the seat appointment "
                 f"({f.seat_on_time} of {f.seat_known})")
             for f in shown]
    desc = (f"Share of cases received on time, by {what}: "
            + "; ".join(f"{f.label} {percent(f.due_rate)} by the due date, {percent(f.seat_rate)} by the seat "
                        "appointment" for f in shown) + ".")
    return rows(key, f"On time by {what}", desc, items, 100, 25, "%",
                legend=[("bar", "By the due date"), ("bar-alt", "By the seat appointment")])


def remakes(report: Report) -> Chart | None:
    if not report.remakes:
        return None
    top_value, step = nice_max(max(r.count for r in report.remakes))
    items = []
    for r in report.remakes:
        practice, lab = r.by_payer.get("practice", 0), r.by_payer.get("lab", 0)
        items.append(Row(r.label, [[(0, practice, "bar-practice"), (practice, practice + lab, "bar-lab")]],
                         f"{r.count} · {percent(r.share)}", {"reason": r.reason},
                         f"{r.label}: {r.count} remade ({percent(r.share)} of cases); the practice paid "
                         f"for {practice}, the lab for {lab}"))
    desc = ("Remakes by reason: " + "; ".join(
        f"{r.label} {r.count} (practice paid {r.by_payer.get('practice', 0)}, lab {r.by_payer.get('lab', 0)})"
        for r in report.remakes) + ".")
    return rows("chart-remakes", "Remakes by reason", desc, items, top_value, step,
                legend=[("bar-practice", "Paid by the practice"), ("bar-lab", "Paid by the lab")])


def remake_rate(report_rows: list[Figures], key: str, what: str) -> Chart | None:
    shown = [f for f in report_rows if f.cases]
    if not any(f.remade for f in shown):
        return None
    top_value, step = nice_max(max(f.remake_rate * 100 for f in shown))
    items = [Row(f.label, [[(0, f.remake_rate * 100, "bar-lab")]],
                 f"{percent(f.remake_rate)} · {f.remade} of {f.cases}",
                 {**f.link, "show": "remade"} if f.link is not None and f.remade else None,
                 f"{f.label}: {f.remade} of {f.cases} cases remade ({percent(f.remake_rate)})")
             for f in shown]
    desc = (f"Share of cases remade, by {what}: "
            + "; ".join(f"{f.label} {percent(f.remake_rate)} ({f.remade} of {f.cases})" for f in shown) + ".")
    return rows(key, f"Remake rate by {what}", desc, items, top_value, step, "%")


def for_report(report: Report) -> dict[str, Chart | None]:
    if report.empty:
        return {}
    return {
        "months": cases_per_month(report),
        "month_turnaround": turnaround_per_month(report),
        "lab_turnaround": turnaround(report.by_lab, "chart-lab-turnaround", "lab"),
        "lab_on_time": on_time(report.by_lab, "chart-lab-on-time", "lab"),
        "service_turnaround": turnaround(report.by_service, "chart-service-turnaround", "service"),
        "service_on_time": on_time(report.by_service, "chart-service-on-time", "service"),
        "remakes": remakes(report),
        "lab_remakes": remake_rate(report.by_lab, "chart-lab-remakes", "lab"),
    }
