"""Every figure of the report against the hand-worked history in conftest.py."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from portal.audit.actor import Actor
from portal.cases import lifecycle
from portal.cases.lifecycle import Status
from portal.extensions import db
from portal.practices.models import PracticeClosure
from portal.reports import services
from portal.reports.services import Drill, ReportFilters, build_report, load_cases, select_cases
from tests.reports.conftest import RANGE, TODAY, at, made


@pytest.fixture()
def report(world, history):
    return build_report(world.practice.id, RANGE, today=TODAY)


def _by_label(rows):
    return {f.label: f for f in rows}


def test_only_the_practices_sent_uncancelled_cases_in_range_count(world, history):
    numbers = {c.number for c in load_cases(world.practice.id, RANGE, today=TODAY)}
    assert numbers == history.numbers("a1", "a2", "a3", "a4", "a5", "b1", "b2")


def test_turnaround_median_and_90th_percentile_in_business_days(report, history):
    a = _by_label(report.by_lab)[history.lab_a.name]
    # sent -> dispatched 4, 5, 6, 8; sent -> received 5, 6, 7, 10 (a5 is still at the lab)
    assert (a.dispatch_median, a.dispatch_p90, a.dispatch_count) == (5.5, pytest.approx(7.4), 4)
    assert (a.receive_median, a.receive_p90, a.receive_count) == (6.5, pytest.approx(9.1), 4)
    b = _by_label(report.by_lab)[history.lab_b.name]
    assert (b.dispatch_median, b.dispatch_p90) == (4.5, pytest.approx(4.9))
    assert (b.receive_median, b.receive_p90) == (6, pytest.approx(6.8))
    # all seven: dispatched 4, 4, 5, 5, 6, 8 -> median 5, p90 at rank 4.5 -> 7; received 5, 5, 6, 7, 7, 10
    t = report.total
    assert (t.dispatch_median, t.dispatch_p90) == (5, pytest.approx(7))
    assert (t.receive_median, t.receive_p90) == (6.5, pytest.approx(8.5))


def test_on_time_against_the_due_date_and_the_seat_appointment(report, history):
    a = _by_label(report.by_lab)[history.lab_a.name]
    # a1 on time, a2 late, a3 on time, a4 late, a5 not back and past due: late
    assert (a.due_on_time, a.due_known, a.due_late) == (2, 5, 3)
    assert a.due_rate == pytest.approx(0.4)
    # a1 and a2 in time for the seat, a3 not; a4 has no seat; a5's seat has not come yet
    assert (a.seat_on_time, a.seat_known, a.seat_late) == (2, 3, 1)
    b = _by_label(report.by_lab)[history.lab_b.name]
    assert (b.due_on_time, b.due_known, b.seat_on_time, b.seat_known) == (1, 2, 2, 2)  # b1 arrived on its seat day
    assert (report.total.due_on_time, report.total.due_known) == (3, 7)
    assert (report.total.seat_on_time, report.total.seat_known) == (4, 5)


def test_a_case_still_out_is_left_out_until_its_day_has_passed(world, history):
    early = dt.date(2031, 3, 6)  # before a5's due date and seat appointment
    a5 = {c.number: c for c in load_cases(world.practice.id, RANGE, today=early)}[history.cases["a5"].number]
    assert a5.on_time_due is None and a5.on_time_seat is None


def test_remake_rate_by_reason_and_payer(report, history):
    a = _by_label(report.by_lab)[history.lab_a.name]
    assert (a.remade, a.cases, a.remake_rate) == (1, 5, pytest.approx(0.2))  # a1's remake was cancelled
    assert report.total.remade == 2 and report.total.remake_rate == pytest.approx(2 / 7)
    rows = {r.reason: r for r in report.remakes}
    assert set(rows) == {"fit", "shade"}
    assert (rows["fit"].count, rows["fit"].by_payer) == (1, {"practice": 0, "lab": 1})
    assert (rows["shade"].count, rows["shade"].by_payer) == (1, {"practice": 1, "lab": 0})
    assert rows["fit"].share == pytest.approx(1 / 7)


def test_fees_sum_and_average_over_the_cases_with_a_fee(report, history):
    a = _by_label(report.by_lab)[history.lab_a.name]
    assert (a.fees_total, a.fees_count, a.fees_average) == (Decimal("800"), 4, Decimal("200.00"))
    t = report.total
    assert (t.fees_total, t.fees_count, t.fees_average) == (Decimal("1800"), 6, Decimal("300.00"))


def test_per_month_and_per_service(report, history):
    months = _by_label(report.by_month)
    assert list(months) == ["Mar 2031", "Apr 2031"]
    assert (months["Mar 2031"].cases, months["Apr 2031"].cases) == (5, 2)
    assert months["Apr 2031"].link == {"month": "2031-04"}
    services_ = _by_label(report.by_service)
    assert list(services_) == ["Crown", "Bridge", "Night guard"]  # the catalogue's order
    # a1 has a crown and a night guard: it counts under both, and once in the totals
    assert (services_["Crown"].cases, services_["Bridge"].cases, services_["Night guard"].cases) == (6, 1, 1)
    assert services_["Night guard"].receive_median == 5
    assert report.total.cases == 7


def test_empty_months_of_the_range_are_shown_as_zero(world, history):
    report = build_report(world.practice.id, ReportFilters(dt.date(2031, 2, 1), dt.date(2031, 5, 15)), today=TODAY)
    assert [(f.label, f.cases) for f in report.by_month] == [
        ("Feb 2031", 1), ("Mar 2031", 5), ("Apr 2031", 2), ("May 2031", 0)]
    assert report.by_month[-1].receive_median is None and report.by_month[-1].due_rate is None


def test_filters_by_lab_and_service(world, history):
    only_b = build_report(world.practice.id, ReportFilters(RANGE.date_from, RANGE.date_to, lab_id=history.lab_b.id),
                          today=TODAY)
    assert only_b.total.cases == 2 and [f.label for f in only_b.by_lab] == [history.lab_b.name]
    bridges = build_report(world.practice.id, ReportFilters(RANGE.date_from, RANGE.date_to, service="bridge"),
                           today=TODAY)
    assert bridges.total.cases == 1 and [f.label for f in bridges.by_service] == ["Bridge"]
    guards = load_cases(world.practice.id, ReportFilters(RANGE.date_from, RANGE.date_to, service="night_guard"),
                        today=TODAY)
    # the case keeps all its services, not only the one filtered on
    assert [c.services for c in guards] == [("crown", "night_guard")]


def test_the_practices_closed_days_are_not_business_days(world, history):
    db.session.add(PracticeClosure(practice_id=world.practice.id, day=dt.date(2031, 3, 5)))
    db.session.commit()
    db.session.info.pop("closed_days", None)
    a1 = next(c for c in load_cases(world.practice.id, RANGE, today=TODAY) if c.number == history.cases["a1"].number)
    assert (a1.to_dispatch, a1.to_receive) == (3, 4)


def test_the_cases_behind_each_figure(world, history):
    cases = load_cases(world.practice.id, RANGE, today=TODAY)

    def behind(**kw):
        return {c.number for c in select_cases(cases, Drill(**kw))}

    assert behind(show="late_due") == history.numbers("a2", "a4", "a5", "b2")
    assert behind(show="late_seat") == history.numbers("a3")
    assert behind(show="remade") == history.numbers("a3", "b1")
    assert behind(reason="fit") == history.numbers("a3")
    assert behind(payer="practice") == history.numbers("b1")
    assert behind(reason="fit", payer="practice") == set()
    assert behind(month="2031-04") == history.numbers("b1", "b2")


def test_resuming_from_hold_keeps_the_send_date(world):
    """The lab's clock runs from the send; a hold and resume at Sent does not restart it."""
    case = made(world, world.labs["email"], "2031-03-03")
    lab = Actor.lab(world.labs["email"])
    lifecycle.move(case, Status.ON_HOLD, actor=lab, reason="shade photo please", now=at("2031-03-04"))
    lifecycle.move(case, Status.SENT, actor=lab, now=at("2031-03-05"))
    assert case.status is Status.SENT and case.sent_at == at("2031-03-03", 9)


def test_filters_from_the_query_string():
    today = dt.date(2031, 5, 15)
    default, errors = ReportFilters.parse({}, today)
    assert (default.date_from, default.date_to, errors) == (dt.date(2030, 12, 1), today, {})
    assert default.month_keys() == ["2030-12", "2031-01", "2031-02", "2031-03", "2031-04", "2031-05"]
    f, errors = ReportFilters.parse({"from": "2031-13-01", "to": "2031-04-30", "service": "spaceship",
                                     "lab": "x"}, today)
    assert set(errors) == {"from", "service", "lab"}
    assert f.date_from == default.date_from and f.service == "" and f.lab_id is None
    f, errors = ReportFilters.parse({"from": "2031-05-01", "to": "2031-04-01"}, today)
    assert "to" in errors and (f.date_from, f.date_to) == (default.date_from, default.date_to)
    f, errors = ReportFilters.parse({"from": "2020-01-01", "to": "2031-04-30"}, today)
    assert "from" in errors and len(f.month_keys()) == services.MAX_MONTHS
    _, errors = Drill.parse({"month": "2031-07", "show": "everything"}, RANGE)
    assert set(errors) == {"month", "show"}
