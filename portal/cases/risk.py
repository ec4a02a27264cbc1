"""Seat risk: the work is expected back later than the seat appointment minus a buffer."""
from __future__ import annotations

from sqlalchemy import select

from portal.cases.duedates import latest_safe_date
from portal.cases.status import Status
from portal.extensions import db
from portal.practices.models import Practice, PracticeClosure


def closed_days(practice_id: int) -> frozenset:
    cache = db.session.info.setdefault("closed_days", {})
    if practice_id not in cache:
        cache[practice_id] = frozenset(
            db.session.scalars(select(PracticeClosure.day).where(PracticeClosure.practice_id == practice_id))
        )
    return cache[practice_id]


def buffer_days(practice_id: int) -> int:
    practice = db.session.get(Practice, practice_id)
    return practice.seat_buffer_days if practice else 2


def risk_of(case) -> tuple[bool, str]:
    """(at risk?, why) for a case as it stands."""
    if case.status not in Status.awaiting_lab() | {Status.DRAFT, Status.RESCAN, Status.DISPATCHED}:
        return False, ""
    seat = case.seat_date
    expected = case.expected_date
    if seat is None or expected is None:
        return False, ""
    safe = latest_safe_date(seat, buffer_days(case.practice_id), closed_days(case.practice_id))
    if expected > safe:
        source = "The lab's ETA" if case.lab_eta else "The due date"
        return True, (
            f"{source} ({expected:%a %d %b}) is after {safe:%a %d %b}, the last day that leaves the "
            f"buffer before the seat appointment on {seat:%a %d %b}. Chase the lab or move the appointment."
        )
    return False, ""


def refresh_risk(case) -> None:
    at_risk = risk_of(case)[0]
    if case.seat_risk is not at_risk:  # the same value again would still make the case dirty (a flush for nothing)
        case.seat_risk = at_risk
