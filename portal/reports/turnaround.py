"""Turnaround learned from the practice's own history, offered when a due date is computed.

A lab's stated turnaround is what it promises; this is what it did for this practice: business
days from the send to the check-in at the practice (the due date means "back here"), over the
cases of the last `WINDOW_DAYS` that came back, per lab and restoration. The median says what is
usual and the 90th percentile what to plan for when the seat appointment can't move. Fewer than
`MINIMUM_CASES` cases say too little to offer anything.
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import select

from portal.cases.catalog import RESTORATIONS
from portal.cases.duedates import add_business_days
from portal.cases.models import CaseItem, LabCase
from portal.cases.risk import closed_days
from portal.cases.status import Status
from portal.extensions import db
from portal.reports.stats import median, percentile

WINDOW_DAYS = 365
MINIMUM_CASES = 5


@dataclass(frozen=True)
class Learned:
    """What the history says about one restoration at one lab."""

    restoration: str
    cases: int
    median: float | None = None
    p90: float | None = None

    @property
    def label(self) -> str:
        return RESTORATIONS.get(self.restoration, self.restoration)

    @property
    def enough(self) -> bool:
        return self.cases >= MINIMUM_CASES

    @property
    def plan_days(self) -> int | None:
        """Whole business days to plan with: the 90th percentile, rounded up."""
        return math.ceil(self.p90) if self.enough and self.p90 is not None else None


def learned(practice_id: int, lab_id: int, restorations: Collection[str],
            today: dt.date | None = None) -> list[Learned]:
    """One entry per known restoration asked for, in the order given; one statement."""
    wanted = list(dict.fromkeys(r for r in restorations if r in RESTORATIONS))
    if not wanted:
        return []
    since = dt.datetime.combine((today or dt.date.today()) - dt.timedelta(days=WINDOW_DAYS), dt.time())
    rows = db.session.execute(
        select(CaseItem.restoration, LabCase.id, LabCase.sent_to_received_bdays)
        .join(LabCase, LabCase.id == CaseItem.case_id)
        .where(LabCase.practice_id == practice_id, LabCase.lab_id == lab_id, LabCase.status != Status.CANCELLED,
               LabCase.sent_to_received_bdays.is_not(None), LabCase.received_at >= since,
               CaseItem.restoration.in_(wanted))
        .distinct()
    ).all()
    spans: dict[str, dict[int, int]] = {r: {} for r in wanted}
    for restoration, case_id, days in rows:  # the business days the reports count (LabCase's own)
        spans[restoration][case_id] = days  # a case with two crowns counts once
    result = []
    for restoration in wanted:
        values = list(spans[restoration].values())
        result.append(Learned(restoration, len(values), median(values), percentile(values, 0.9)))
    return result


def planned_due_date(practice_id: int, history: list[Learned], start: dt.date | None = None) -> dt.date | None:
    """The due date the history suggests: the longest 90th percentile among the restorations that
    have enough history, counted from `start` (today) in business days; None without enough."""
    days = [h.plan_days for h in history if h.plan_days is not None]
    if not days:
        return None
    return add_business_days(start or dt.date.today(), max(days), closed_days(practice_id))


@dataclass(frozen=True)
class DueAdvice:
    """Beside the case form's due date: the lab's promise and the practice's experience of it."""

    lab_name: str
    stated_days: int | None
    stated_date: dt.date | None
    history: list[Learned]
    planned_date: dt.date | None


def due_advice(practice_id: int, lab, restorations: Collection[str], today: dt.date | None = None) -> DueAdvice:
    today = today or dt.date.today()
    wanted = list(dict.fromkeys(r for r in restorations if r in RESTORATIONS))
    stated = [s.turnaround_days for r in wanted if (s := lab.service_for(r))]
    closed = closed_days(practice_id)
    stated_days = max(stated) if stated else None
    history = learned(practice_id, lab.id, wanted, today)
    return DueAdvice(
        lab_name=lab.name, stated_days=stated_days,
        stated_date=add_business_days(today, stated_days, closed) if stated_days is not None else None,
        history=history, planned_date=planned_due_date(practice_id, history, today))
