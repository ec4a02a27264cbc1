"""The demo's cases carry the business days the reports count (stored by the lifecycle as the
seed moves them), the same as counting them afresh with the practice's closed days; its manager
manages the group, so the DSO view has something to show."""
from __future__ import annotations

import datetime as dt

import time_machine
from sqlalchemy import select

from portal.cases.models import LabCase
from portal.cases.risk import closed_days
from portal.demo.seed import seed
from portal.practices.models import Organization, User
from portal.reports.stats import business_days_between


def test_the_demos_stored_business_days_are_the_counted_ones(db):
    today = dt.date(2031, 5, 15)
    with time_machine.travel(dt.datetime(2031, 5, 15, 12, tzinfo=dt.UTC)):
        seed("demo-password-for-tests", today=today)
        db.session.commit()
    checked = 0
    for case in db.session.scalars(select(LabCase).where(LabCase.sent_at.is_not(None))):
        closed = closed_days(case.practice_id)
        sent = case.sent_at.date()
        assert case.sent_to_dispatched_bdays == (
            business_days_between(sent, case.dispatched_at.date(), closed) if case.dispatched_at else None), case.number
        assert case.sent_to_received_bdays == (
            business_days_between(sent, case.received_at.date(), closed) if case.received_at else None), case.number
        checked += case.received_at is not None
    assert checked > 100
    manager = db.session.scalar(select(User).where(User.email == "manager@demo.test"))
    org = db.session.scalar(select(Organization))
    assert manager.manages(org.id)
    assert not db.session.scalar(select(User).where(User.email == "admin@demo.test")).manages(org.id)
