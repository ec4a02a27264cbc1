"""The board's queries: a constant number of statements whatever the number of cases."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import joinedload, selectinload

from portal.audit.models import AuditEvent
from portal.board.cards import CardView, card_select, load_cards
from portal.cases.lifecycle import TRANSITIONS, Status
from portal.cases.models import LabCase
from portal.extensions import db
from portal.people.models import Patient

COLUMNS = [
    Status.DRAFT, Status.SENT, Status.ACKNOWLEDGED, Status.IN_PRODUCTION, Status.DISPATCHED,
    Status.RECEIVED, Status.FITTED, Status.ON_HOLD, Status.RESCAN,
]
PHASES = [
    ("request", [Status.DRAFT, Status.SENT]),
    ("in progress", [Status.ACKNOWLEDGED, Status.IN_PRODUCTION]),
    ("delivery", [Status.DISPATCHED, Status.RECEIVED]),
    ("fit", [Status.FITTED]),
    ("exceptions", [Status.ON_HOLD]),  # On hold and Returned for rescan share one stacked column
]
# Dropping into these columns asks for a reason first.
NEEDS_REASON = frozenset(
    to for targets in TRANSITIONS.values() for to, rule in targets.items() if rule.needs_reason
)
FITTED_SHOWN_DAYS = 14
DUE_WINDOWS = {"overdue": "Overdue", "today": "Due today", "week": "Due in 7 days", "fortnight": "Due in 14 days"}


@dataclass
class Filters:
    lab_id: int | None = None
    provider_id: int | None = None
    due: str = ""
    origin: str = ""
    risk: bool = False
    q: str = ""

    @classmethod
    def from_args(cls, args) -> Filters:
        return cls(
            lab_id=args.get("lab", type=int), provider_id=args.get("provider", type=int),
            due=args.get("due", "") if args.get("due", "") in DUE_WINDOWS else "",
            origin=args.get("origin", "")[:20], risk=args.get("risk") in ("1", "on", "true"),
            q=args.get("q", "").strip()[:100],
        )

    def as_args(self) -> dict:
        args = {"lab": self.lab_id, "provider": self.provider_id, "due": self.due, "origin": self.origin,
                "risk": "1" if self.risk else None, "q": self.q}
        return {k: v for k, v in args.items() if v}

    @property
    def active(self) -> bool:
        return bool(self.as_args())


@dataclass
class Column:
    status: Status
    count: int = 0
    cards: list[CardView] = field(default_factory=list)

    @property
    def has_more(self) -> bool:
        return self.count > len(self.cards)

    @property
    def needs_reason(self) -> bool:
        return self.status in NEEDS_REASON


def _conditions(practice_id: int, f: Filters, today: dt.date) -> list:
    shown_since = dt.datetime.combine(today - dt.timedelta(days=FITTED_SHOWN_DAYS), dt.time())
    conds = [
        LabCase.practice_id == practice_id,
        LabCase.status.in_(COLUMNS),
        or_(LabCase.status != Status.FITTED, LabCase.fitted_at >= shown_since),
    ]
    if f.lab_id:
        conds.append(LabCase.lab_id == f.lab_id)
    if f.provider_id:
        conds.append(LabCase.provider_id == f.provider_id)
    if f.origin:
        conds.append(LabCase.origin == f.origin)
    if f.risk:
        conds.append(LabCase.seat_risk.is_(True))
    expected = func.coalesce(LabCase.lab_eta, LabCase.due_date)
    waiting = LabCase.status.in_(Status.awaiting_lab() | {Status.DRAFT})
    if f.due == "overdue":
        conds += [LabCase.status.in_(Status.awaiting_lab()), expected < today]
    elif f.due == "today":
        conds += [waiting, expected == today]
    elif f.due in ("week", "fortnight"):
        days = 7 if f.due == "week" else 14
        conds += [waiting, expected <= today + dt.timedelta(days=days)]
    if f.q:
        like = f"%{f.q.lower()}%"
        conds.append(or_(
            func.lower(LabCase.number).like(like),
            LabCase.patient_id.in_(select(Patient.id).where(
                Patient.practice_id == practice_id,
                or_(func.lower(Patient.last_name + " " + Patient.first_name).like(like),
                    func.lower(Patient.first_name + " " + Patient.last_name).like(like),
                    func.lower(Patient.chart_number) == f.q.lower()),
            )),
        ))
    return conds


def _order():
    return (LabCase.due_date.is_(None), LabCase.due_date, LabCase.id)


def card_query():
    return select(LabCase).options(
        joinedload(LabCase.patient), joinedload(LabCase.lab),
        joinedload(LabCase.seat_appointment), selectinload(LabCase.items),
    )


def load_board(practice_id: int, f: Filters, per_column: int, today: dt.date | None = None) -> list[Column]:
    """Counts per column and the first `per_column` cards of each: three statements in all."""
    today = today or dt.date.today()
    conds = _conditions(practice_id, f, today)
    counts = dict(db.session.execute(
        select(LabCase.status, func.count()).where(*conds).group_by(LabCase.status)
    ).all())
    ranked = select(
        LabCase.id, func.row_number().over(partition_by=LabCase.status, order_by=_order()).label("rn")
    ).where(*conds).subquery()
    cards = load_cards(
        card_select().join(ranked, ranked.c.id == LabCase.id).where(ranked.c.rn <= per_column).order_by(*_order())
    )
    columns = {s: Column(s, counts.get(s, 0)) for s in COLUMNS}
    for case in cards:
        columns[case.status].cards.append(case)
    return list(columns.values())


def load_column(practice_id: int, status: Status, f: Filters, offset: int, limit: int,
                today: dt.date | None = None) -> list[CardView]:
    conds = _conditions(practice_id, f, today or dt.date.today())
    return load_cards(card_select().where(*conds, LabCase.status == status).order_by(*_order())
                      .offset(offset).limit(limit))


def board_stamp(practice_id: int) -> int:
    """Changes whenever anything on the practice's board may have changed: every change writes
    an audit row (A1), so the newest audit sequence number is the board's version."""
    return db.session.scalar(
        select(func.max(AuditEvent.seq)).where(AuditEvent.practice_id == practice_id)
    ) or 0


def risk_list(practice_id: int, today: dt.date | None = None) -> list[LabCase]:
    """Open cases at seat risk or late, soonest seat first."""
    today = today or dt.date.today()
    expected = func.coalesce(LabCase.lab_eta, LabCase.due_date)
    late = and_(LabCase.status.in_(Status.awaiting_lab()), expected < today)
    rows = db.session.scalars(
        card_query().where(LabCase.practice_id == practice_id, LabCase.status.in_(Status.open()),
                           or_(LabCase.seat_risk.is_(True), late))
        .order_by(LabCase.due_date)
    ).unique().all()
    return sorted(rows, key=lambda c: (c.seat_date or dt.date.max, c.due_date or dt.date.max))


@dataclass
class DayView:
    day: dt.date
    due_by_lab: dict[str, list[LabCase]]
    received: list[LabCase]
    seating: list[LabCase]


def day_view(practice_id: int, day: dt.date) -> DayView:
    """Dentrix Ascend's outstanding and received lists: what is due in on `day`, grouped by lab;
    what arrived; and whose work is being seated."""
    from portal.people.models import Appointment

    expected = func.coalesce(LabCase.lab_eta, LabCase.due_date)
    start, end = dt.datetime.combine(day, dt.time()), dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    due = db.session.scalars(card_query().where(
        LabCase.practice_id == practice_id, expected == day,
        LabCase.status.in_(Status.awaiting_lab() | {Status.DISPATCHED})).order_by(LabCase.id)).unique().all()
    received = db.session.scalars(card_query().where(
        LabCase.practice_id == practice_id, LabCase.received_at >= start, LabCase.received_at < end)
        .order_by(LabCase.received_at)).unique().all()
    seating = db.session.scalars(card_query().join(Appointment, Appointment.id == LabCase.seat_appointment_id).where(
        LabCase.practice_id == practice_id, Appointment.starts_at >= start, Appointment.starts_at < end,
        LabCase.status != Status.CANCELLED).order_by(Appointment.starts_at)).unique().all()
    by_lab: dict[str, list[LabCase]] = {}
    for case in due:
        by_lab.setdefault(case.lab.name if case.lab else "No lab", []).append(case)
    return DayView(day, dict(sorted(by_lab.items())), list(received), list(seating))
