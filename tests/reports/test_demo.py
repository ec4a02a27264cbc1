"""The demo's history makes a report worth reading: every month has work, and lateness, remakes
and fees are there to see (the demo is what a first-time manager opens)."""
from __future__ import annotations

import datetime as dt

import time_machine
from sqlalchemy import select

from portal.audit.record import verify_chain
from portal.demo.seed import seed
from portal.practices.models import Practice
from portal.reports.services import ReportFilters, build_report


def test_the_demo_has_six_months_of_history_to_report(db):
    today = dt.date(2031, 5, 15)
    with time_machine.travel(dt.datetime(2031, 5, 15, 12, tzinfo=dt.UTC)):  # the live cases' "now" too
        seed("demo-password-for-tests", today=today)
        db.session.commit()
    practice = db.session.scalar(select(Practice).where(Practice.name == "Bright Smiles Downtown"))
    report = build_report(practice.id, ReportFilters.default(today), today=today)
    assert report.total.cases > 120
    assert all(month.cases >= 15 for month in report.by_month), [(m.label, m.cases) for m in report.by_month]
    assert len(report.by_lab) == 3 and report.total.receive_count > 100
    assert 0.4 < report.total.due_rate < 0.95 and 0.6 < report.total.seat_rate < 1
    assert report.total.remade >= 5 and len(report.remakes) >= 2
    assert report.total.fees_count == report.total.cases
    assert list(verify_chain()) == []
