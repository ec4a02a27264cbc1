"""Board cards as plain rows. A board page shows up to a few hundred cards; building full ORM
objects (case, patient, lab, appointment, items) for them cost ten times the SQL itself, so the
board reads exactly the columns a card shows into these small read-only views."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from types import SimpleNamespace

from sqlalchemy import FromClause, Select, select

from portal.cases.models import CaseDates, CaseItem, LabCase
from portal.cases.status import Status
from portal.dispatch.models import RETRYING_AFTER, Dispatch, DispatchState, OrderNotice
from portal.extensions import db
from portal.labs.models import Channel, Lab
from portal.people.models import Appointment, Patient


@dataclass
class CardView(CaseDates):
    """Duck-types the parts of LabCase the card template and the lifecycle's allowed_moves read."""

    id: int
    number: str
    status: Status
    status_reason: str
    held_from: Status | None
    due_date: dt.date | None
    lab_eta: dt.date | None
    seat_risk: bool
    origin: str
    remake_of_id: int | None
    dispatch_error: str
    notice_failed: str  # "Message", "Cancellation"...: the oldest update the lab's API did not take, or ""
    notice_error: str  # and why
    retrying_at: dt.datetime | None  # the work order's next attempt, from its second failure on
    retrying_error: str  # and why the last one failed
    patient: SimpleNamespace
    lab: SimpleNamespace | None
    seat_appointment: SimpleNamespace | None
    items: list[SimpleNamespace] = field(default_factory=list)


def _failed_notice(column):
    """`column` of the case's oldest update the lab's API did not take, as a correlated subquery
    (index ix_order_notice_case_state): the badge costs no extra statement per page."""
    return (select(column)
            .where(OrderNotice.case_id == LabCase.id, OrderNotice.state == DispatchState.FAILED)
            .order_by(OrderNotice.id).limit(1).correlate(LabCase).scalar_subquery())


def _retrying(column):
    """`column` of the case's work order to an API lab while it waits for a retry after two or
    more failed attempts (index ix_dispatch_case_id): one more column, no extra statement."""
    return (select(column)
            .where(Dispatch.case_id == LabCase.id, Dispatch.channel == Channel.API,
                   Dispatch.state == DispatchState.PENDING, Dispatch.attempts >= RETRYING_AFTER)
            .order_by(Dispatch.created_at.desc()).limit(1).correlate(LabCase).scalar_subquery())


def card_select(ids: FromClause | None = None) -> Select:
    """The card's columns, from the cases, or from the cases whose `id` the subquery `ids` lists
    (joined first, so the database fetches only those cases)."""
    stmt = select(LabCase.id, LabCase.number, LabCase.status, LabCase.status_reason, LabCase.held_from,
                  LabCase.due_date, LabCase.lab_eta, LabCase.seat_risk, LabCase.origin, LabCase.remake_of_id,
                  LabCase.dispatch_error, LabCase.created_at, _failed_notice(OrderNotice.type).label("notice_type"),
                  _failed_notice(OrderNotice.last_error).label("notice_error"),
                  _retrying(Dispatch.next_attempt_at).label("retrying_at"),
                  _retrying(Dispatch.last_error).label("retrying_error"), Patient.first_name,
                  Patient.last_name, Patient.pms_standing, Lab.name.label("lab_name"),
                  Appointment.starts_at.label("seat_at"))
    if ids is not None:
        stmt = stmt.select_from(ids).join(LabCase, LabCase.id == ids.c.id)
    return (
        stmt.join(Patient, Patient.id == LabCase.patient_id)
        .outerjoin(Lab, Lab.id == LabCase.lab_id)
        .outerjoin(Appointment, Appointment.id == LabCase.seat_appointment_id)
    )


def load_cards(stmt: Select, params: dict | None = None) -> list[CardView]:
    """Run a card_select() statement (with `params` for its bound parameters) and attach each
    card's prescription items: two statements."""
    cards = [
        CardView(
            id=r.id, number=r.number, status=r.status, status_reason=r.status_reason, held_from=r.held_from,
            due_date=r.due_date, lab_eta=r.lab_eta, seat_risk=r.seat_risk, origin=r.origin,
            remake_of_id=r.remake_of_id, dispatch_error=r.dispatch_error,
            notice_failed=r.notice_type.label if r.notice_type else "", notice_error=r.notice_error or "",
            retrying_at=r.retrying_at, retrying_error=r.retrying_error or "",
            patient=SimpleNamespace(first_name=r.first_name, last_name=r.last_name, pms_standing=r.pms_standing),
            lab=SimpleNamespace(name=r.lab_name) if r.lab_name is not None else None,
            seat_appointment=SimpleNamespace(starts_at=r.seat_at) if r.seat_at is not None else None,
        )
        for r in db.session.execute(stmt, params or {})
    ]
    if cards:
        by_id = {c.id: c for c in cards}
        for item in db.session.execute(
            select(CaseItem.case_id, CaseItem.teeth, CaseItem.restoration, CaseItem.material, CaseItem.shade)
            .where(CaseItem.case_id.in_(by_id)).order_by(CaseItem.case_id, CaseItem.position)
        ):
            by_id[item.case_id].items.append(SimpleNamespace(
                teeth=item.teeth, restoration=item.restoration, material=item.material, shade=item.shade))
    return cards
