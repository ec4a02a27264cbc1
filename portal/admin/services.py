"""Practice settings. Changing the buffer or the closed days re-judges the seat risk of open cases."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from portal.audit.record import record
from portal.cases.models import LabCase
from portal.cases.risk import refresh_risk
from portal.cases.status import Status
from portal.extensions import db
from portal.practices.models import Practice, PracticeClosure

SETTINGS = ("name", "phone", "address", "tooth_numbering", "seat_buffer_days")


def update_practice(practice: Practice, values: dict) -> dict:
    before = {k: getattr(practice, k) for k in SETTINGS}
    for key in SETTINGS:
        setattr(practice, key, values[key])
    changed = {k for k in SETTINGS if before[k] != getattr(practice, k)}
    if changed:
        record("practice.update", "practice", practice.id, before={k: before[k] for k in changed},
               after={k: getattr(practice, k) for k in changed}, practice_id=practice.id)
        if "seat_buffer_days" in changed:
            rejudge_risk(practice.id)
    return {k: (before[k], getattr(practice, k)) for k in changed}


class DuplicateClosure(ValueError):
    pass


def add_closure(practice: Practice, day: dt.date, reason: str) -> PracticeClosure:
    exists = db.session.scalar(select(PracticeClosure).where(
        PracticeClosure.practice_id == practice.id, PracticeClosure.day == day))
    if exists:
        raise DuplicateClosure(f"{day:%a %d %b %Y} is already a closed day.")
    closure = PracticeClosure(practice_id=practice.id, day=day, reason=reason)
    db.session.add(closure)
    db.session.flush()
    record("practice.closure_add", "practice", practice.id, after={"day": day, "reason": reason},
           practice_id=practice.id)
    rejudge_risk(practice.id)
    return closure


def remove_closure(practice: Practice, closure: PracticeClosure) -> None:
    record("practice.closure_remove", "practice", practice.id, before={"day": closure.day,
           "reason": closure.reason}, practice_id=practice.id)
    db.session.delete(closure)
    db.session.flush()
    rejudge_risk(practice.id)


def rejudge_risk(practice_id: int) -> int:
    """Recompute seat risk for every open case of the practice; returns how many changed."""
    db.session.info.pop("closed_days", None)
    changed = 0
    for case in db.session.scalars(select(LabCase).where(
            LabCase.practice_id == practice_id, LabCase.status.in_(Status.open()))):
        before = case.seat_risk
        refresh_risk(case)
        changed += before != case.seat_risk
    return changed
