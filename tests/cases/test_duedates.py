"""Business days (weekends and closed days skipped) and the seat-risk buffer."""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.audit.actor import Actor
from portal.cases import lifecycle
from portal.cases.duedates import add_business_days, is_business_day, latest_safe_date
from portal.cases.lifecycle import Status
from portal.cases.risk import refresh_risk, risk_of
from portal.extensions import db
from portal.practices.models import PracticeClosure
from tests import factories

# A fixed week: Mon 2031-03-03 ... Sun 2031-03-09.
MON = dt.date(2031, 3, 3)
TUE, WED, THU, FRI, SAT, SUN = (MON + dt.timedelta(days=i) for i in range(1, 7))
NEXT_MON = MON + dt.timedelta(days=7)


def test_the_fixed_week_is_the_week_we_think():
    assert [d.strftime("%a") for d in (MON, TUE, WED, THU, FRI, SAT, SUN)] == [
        "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


@pytest.mark.parametrize(("start", "days", "closed", "expected"), [
    (MON, 1, (), TUE),
    (MON, 4, (), FRI),
    (FRI, 1, (), NEXT_MON),  # over the weekend
    (THU, 2, (), NEXT_MON),
    (MON, 5, (), NEXT_MON),
    (MON, 10, (), NEXT_MON + dt.timedelta(days=7)),
    (SAT, 1, (), NEXT_MON),
    (SUN, 1, (), NEXT_MON),
    (MON, 0, (), MON),
    (SAT, 0, (), NEXT_MON),  # 0 rolls forward to a business day
    (MON, 1, {TUE}, WED),  # a closed day is skipped
    (MON, 3, {TUE, WED}, NEXT_MON),
    (FRI, 1, {NEXT_MON}, NEXT_MON + dt.timedelta(days=1)),
    (TUE, 0, {TUE}, WED),
    # negative offsets go back
    (TUE, -1, (), MON),
    (MON, -1, (), FRI - dt.timedelta(days=7)),
    (NEXT_MON, -1, (), FRI),
    (NEXT_MON, -5, (), MON),
    (SUN, -1, (), FRI),
    (SAT, -2, (), THU),
    (FRI, -2, {WED}, TUE),
    (NEXT_MON, -1, {FRI}, THU),
    (NEXT_MON, -2, {FRI, THU}, TUE),
])
def test_add_business_days(start, days, closed, expected):
    assert add_business_days(start, days, closed) == expected


def test_weekends_and_closed_days_are_not_business_days():
    assert [is_business_day(d) for d in (MON, TUE, WED, THU, FRI, SAT, SUN)] == [True] * 5 + [False] * 2
    assert not is_business_day(WED, {WED})


@given(start=st.dates(dt.date(2025, 1, 1), dt.date(2035, 12, 31)), days=st.integers(-40, 40),
       closed=st.sets(st.dates(dt.date(2025, 1, 1), dt.date(2036, 3, 31)), max_size=30))
def test_business_days_counted_between_start_and_result(start, days, closed):
    result = add_business_days(start, days, closed)
    assert is_business_day(result, closed)
    if days > 0:
        assert result > start
        between = [start + dt.timedelta(d) for d in range(1, (result - start).days + 1)]
        assert sum(is_business_day(d, closed) for d in between) == days
    elif days < 0:
        assert result < start
        between = [result + dt.timedelta(d) for d in range((start - result).days)]
        assert sum(is_business_day(d, closed) for d in between) == -days


def test_latest_safe_date_is_the_buffer_before_the_seat():
    assert latest_safe_date(NEXT_MON, 2) == THU
    assert latest_safe_date(NEXT_MON, 2, {THU}) == WED
    assert latest_safe_date(WED, 0) == WED
    assert latest_safe_date(WED, 1) == TUE


# -- seat risk -------------------------------------------------------------------------------------

SEAT = dt.date(2031, 3, 12)  # a Wednesday; with the default 2-day buffer the last safe day is Mon 10th
SAFE = dt.date(2031, 3, 10)


def _case(world, status=Status.SENT, due=SAFE, eta=None):
    case = factories.case(world, status, seat=SEAT, due=due)
    if eta is not None:
        case.lab_eta = eta
    refresh_risk(case)
    return case


def test_due_on_the_last_safe_day_is_not_at_risk(world):
    assert world.practice.seat_buffer_days == 2
    assert risk_of(_case(world)) == (False, "")


def test_due_a_day_later_is_at_risk_and_says_why(world):
    case = _case(world, due=SAFE + dt.timedelta(days=1))
    at_risk, why = risk_of(case)
    assert at_risk and case.seat_risk
    assert why.startswith("The due date (Tue 11 Mar) is after Mon 10 Mar")
    assert "seat appointment on Wed 12 Mar" in why


def test_the_labs_eta_takes_precedence_over_the_due_date(world):
    late_due_early_eta = _case(world, due=SAFE + dt.timedelta(days=1), eta=SAFE - dt.timedelta(days=3))
    assert risk_of(late_due_early_eta) == (False, "")
    early_due_late_eta = _case(world, due=SAFE - dt.timedelta(days=3), eta=SAFE + dt.timedelta(days=1))
    at_risk, why = risk_of(early_due_late_eta)
    assert at_risk and why.startswith("The lab's ETA (Tue 11 Mar)")


def test_an_eta_from_the_lab_rejudges_the_risk_on_move(world):
    case = _case(world, status=Status.ACKNOWLEDGED)
    assert not case.seat_risk
    lifecycle.move(case, Status.DISPATCHED, actor=Actor.lab(world.lab), detail={"eta": "2031-03-11"})
    assert case.lab_eta == dt.date(2031, 3, 11) and case.seat_risk


def test_the_practices_buffer_and_closed_days_move_the_limit(world):
    case = _case(world)
    assert not case.seat_risk
    world.practice.seat_buffer_days = 3
    db.session.flush()
    assert risk_of(case)[0]  # the last safe day is now Fri 7th
    world.practice.seat_buffer_days = 2
    db.session.add(PracticeClosure(practice_id=world.practice.id, day=dt.date(2031, 3, 11), reason="Training"))
    db.session.flush()
    db.session.info.pop("closed_days", None)  # the per-session cache, as admin.services does
    assert risk_of(case)[0]  # Tue closed: two business days before Wed is Fri 7th


@pytest.mark.parametrize("status", [Status.RECEIVED, Status.FITTED, Status.CANCELLED])
def test_work_that_is_back_or_closed_is_never_at_risk(world, status):
    case = _case(world, status=status, due=SAFE + dt.timedelta(days=5))
    assert risk_of(case) == (False, "") and not case.seat_risk


@pytest.mark.parametrize("status", [Status.DRAFT, Status.SENT, Status.ACKNOWLEDGED, Status.IN_PRODUCTION,
                                    Status.ON_HOLD, Status.RESCAN, Status.DISPATCHED])
def test_open_work_can_be_at_risk(world, status):
    case = _case(world, status=status, due=SAFE + dt.timedelta(days=1))
    assert risk_of(case)[0]


def test_no_seat_or_no_date_means_no_risk(world):
    no_seat = factories.case(world, Status.SENT, due=SAFE + dt.timedelta(days=30))
    assert risk_of(no_seat) == (False, "")
    no_date = _case(world, due=None)
    no_date.due_date = None
    assert risk_of(no_date) == (False, "")
