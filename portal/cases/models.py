from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from sqlalchemy import (
    Date, DateTime, Enum, ForeignKey, Index, Integer, Numeric, String, Text, UniqueConstraint,
)
from sqlalchemy import event, inspect
from sqlalchemy.orm import Mapped, Session, mapped_column, object_session, relationship

from portal.cases.status import Status
from portal.clock import utcnow
from portal.extensions import db
from portal.practices.models import PracticeClosure
from portal.reports.stats import business_days_between


class Counter(db.Model):
    """Named counters incremented atomically (UPDATE ... RETURNING) for case numbers."""

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


class CaseDates:
    """Dates a case is judged by; shared by the ORM model and the board's plain card rows."""

    status: Status
    lab_eta: dt.date | None
    due_date: dt.date | None
    seat_appointment: object

    @property
    def seat_date(self) -> dt.date | None:
        return self.seat_appointment.starts_at.date() if self.seat_appointment else None

    @property
    def expected_date(self) -> dt.date | None:
        """When the work is expected back: the lab's ETA once known, else the due date."""
        return self.lab_eta or self.due_date

    def is_overdue(self, today: dt.date) -> bool:
        return (
            self.status in Status.awaiting_lab()
            and self.expected_date is not None
            and self.expected_date < today
        )


class LabCase(CaseDates, db.Model):
    __table_args__ = (
        Index("ix_lab_case_board", "practice_id", "status", "due_date"),
        # The board's Fitted column shows the last two weeks of a history that only grows.
        Index("ix_lab_case_fitted", "practice_id", "status", "fitted_at"),
        Index("ix_lab_case_practice_updated", "practice_id", "updated_at"),
        # The managers' reports: a practice's cases by send date, with every column the figures
        # read, so the report scans the index alone (bench/reports.py: about 4x less CPU on SQLite;
        # PostgreSQL needs the id in it too, which SQLite's index has as its rowid).
        Index("ix_lab_case_report", "practice_id", "sent_at", "status", "lab_id", "sent_to_dispatched_bdays",
              "sent_to_received_bdays", "due_date", "received_at", "seat_appointment_id", "fee", "restorations",
              postgresql_include=["id"]),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(20), unique=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    provider_id: Mapped[int | None] = mapped_column(ForeignKey("provider.id"))
    lab_id: Mapped[int | None] = mapped_column(ForeignKey("lab.id"), index=True)
    seat_appointment_id: Mapped[int | None] = mapped_column(ForeignKey("appointment.id"), index=True)
    planned_appointment_id: Mapped[int | None] = mapped_column(ForeignKey("appointment.id"))
    status: Mapped[Status] = mapped_column(Enum(Status, native_enum=False, length=20), default=Status.DRAFT)
    status_reason: Mapped[str] = mapped_column(String(500), default="")
    held_from: Mapped[Status | None] = mapped_column(Enum(Status, native_enum=False, length=20))
    due_date: Mapped[dt.date | None] = mapped_column(Date)
    due_date_overridden: Mapped[bool] = mapped_column(default=False)
    lab_eta: Mapped[dt.date | None] = mapped_column(Date)
    seat_risk: Mapped[bool] = mapped_column(default=False)
    # Kept by portal.dispatch.services: why the latest dispatch to the lab failed, "" when it did not
    # (the board's badge reads it without another query; docs/reliability.md D4).
    dispatch_error: Mapped[str] = mapped_column(String(300), default="")
    fee: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    invoice_number: Mapped[str] = mapped_column(String(60), default="")
    instructions: Mapped[str] = mapped_column(Text, default="")
    origin: Mapped[str] = mapped_column(String(20), default="manual")  # manual, itero, medit, 3shape
    origin_order_id: Mapped[str] = mapped_column(String(100), default="")
    stage: Mapped[str] = mapped_column(String(20), default="final")  # try_in or final
    previous_stage_id: Mapped[int | None] = mapped_column(ForeignKey("lab_case.id"))
    remake_of_id: Mapped[int | None] = mapped_column(ForeignKey("lab_case.id"), index=True)
    remake_reason: Mapped[str] = mapped_column(String(20), default="")
    remake_payer: Mapped[str] = mapped_column(String(20), default="")
    carrier: Mapped[str] = mapped_column(String(60), default="")
    tracking_number: Mapped[str] = mapped_column(String(100), default="")
    quality_checked: Mapped[bool] = mapped_column(default=False)
    quality_note: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    received_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    fitted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    closed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # Business days sent -> dispatched and sent -> received (the reports' turnaround), kept by
    # lifecycle.move() whenever it stamps one of those dates, and by the practice's closed days
    # changing (practice_closure_changed below). None until both dates exist, or when the latest
    # send is after the other date (a resend after a rescan). portal/reports/stats.py has the rule.
    sent_to_dispatched_bdays: Mapped[int | None] = mapped_column(Integer)
    sent_to_received_bdays: Mapped[int | None] = mapped_column(Integer)
    # The case's services for the reports: its items' distinct restoration codes, sorted, as a JSON
    # array ('["bridge", "crown"]'), kept by every flush that adds, changes or removes an item
    # (_keep_restorations below). The reports group cases by it and count a case once under each
    # code without joining case_item (over an organisation that join was a third of the time).
    restorations: Mapped[str] = mapped_column(String(400), default="[]", server_default="[]")

    patient = relationship("Patient")
    provider = relationship("Provider")
    lab = relationship("Lab")
    seat_appointment = relationship("Appointment", foreign_keys=[seat_appointment_id])
    planned_appointment = relationship("Appointment", foreign_keys=[planned_appointment_id])
    items: Mapped[list[CaseItem]] = relationship(
        back_populates="case", cascade="all, delete-orphan", order_by="CaseItem.position"
    )
    remake_of = relationship("LabCase", remote_side=[id], foreign_keys=[remake_of_id])
    previous_stage = relationship("LabCase", remote_side=[id], foreign_keys=[previous_stage_id])



def business_day_spans(case: LabCase, closed) -> None:
    """Set the case's stored business-day spans from its own dates and the practice's `closed` days."""
    sent = case.sent_at.date() if case.sent_at else None
    case.sent_to_dispatched_bdays = (
        business_days_between(sent, case.dispatched_at.date(), closed) if sent and case.dispatched_at else None)
    case.sent_to_received_bdays = (
        business_days_between(sent, case.received_at.date(), closed) if sent and case.received_at else None)


def _shift_spans(connection, practice_id: int, day: dt.date, by: int) -> None:
    """A weekday `day` became closed (by=-1) or open again (by=+1) for the practice: every case
    whose span runs over it (sent before that day, dispatched or received on it or later) has one
    business day fewer or more. A weekend day changes nothing."""
    if day.weekday() >= 5:
        return
    table = LabCase.__table__
    midnight = dt.datetime.combine(day, dt.time())
    for column, end in ((table.c.sent_to_dispatched_bdays, table.c.dispatched_at),
                        (table.c.sent_to_received_bdays, table.c.received_at)):
        connection.execute(
            table.update()
            .where(table.c.practice_id == practice_id, table.c.sent_at < midnight, end >= midnight,
                   column.is_not(None))
            .values({column: column + by}))


@event.listens_for(PracticeClosure, "after_insert")
def _closure_added(mapper, connection, closure) -> None:
    _shift_spans(connection, closure.practice_id, closure.day, -1)
    _forget_closed_days(closure)


@event.listens_for(PracticeClosure, "after_delete")
def _closure_removed(mapper, connection, closure) -> None:
    _shift_spans(connection, closure.practice_id, closure.day, +1)
    _forget_closed_days(closure)


@event.listens_for(PracticeClosure, "after_update")
def _closure_moved(mapper, connection, closure) -> None:
    history = inspect(closure).attrs.day.history
    if history.deleted and history.added:
        _shift_spans(connection, closure.practice_id, history.deleted[0], +1)
        _shift_spans(connection, closure.practice_id, history.added[0], -1)
    _forget_closed_days(closure)


def _forget_closed_days(closure) -> None:
    """portal.cases.risk.closed_days caches a practice's closed days per session."""
    session = object_session(closure)
    if session is not None:
        session.info.get("closed_days", {}).pop(closure.practice_id, None)


def restorations_of(codes) -> str:
    """LabCase.restorations for these restoration codes."""
    return json.dumps(sorted(set(codes)))


@event.listens_for(Session, "before_flush")
def _keep_restorations(session, flush_context, instances) -> None:
    """Each case whose items are added, removed or change restoration gets its restorations anew
    from the items it has after this flush."""
    cases = set()
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, LabCase):
            if obj in session.new or inspect(obj).attrs["items"].history.has_changes():
                cases.add(obj)
        elif isinstance(obj, CaseItem):
            state = inspect(obj)
            if obj in session.dirty and not (state.attrs.restoration.history.has_changes()
                                             or state.attrs.case.history.has_changes()):
                continue
            history = state.attrs.case.history
            cases.update(c for c in (*history.added, *history.unchanged, *history.deleted) if c is not None)
            if obj.case_id is not None and not history.unchanged and not history.added:
                with session.no_autoflush:
                    case = session.get(LabCase, obj.case_id)
                if case is not None:
                    cases.add(case)
    if not cases:
        return
    added = [obj for obj in session.new if isinstance(obj, CaseItem)]  # some only by case_id
    with session.no_autoflush:
        for case in cases:
            if case in session.deleted:
                continue
            mine = {*case.items, *(i for i in added if i.case is case or (case.id and i.case_id == case.id))}
            codes = restorations_of(i.restoration for i in mine if i not in session.deleted)
            if case.restorations != codes:
                case.restorations = codes


class CaseItem(db.Model):
    """One line of the prescription: teeth (FDI, space separated), restoration, material..."""

    __table_args__ = (UniqueConstraint("case_id", "position"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("lab_case.id"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    teeth: Mapped[str] = mapped_column(String(200), default="")
    restoration: Mapped[str] = mapped_column(String(40))
    material: Mapped[str] = mapped_column(String(60), default="")
    shade: Mapped[str] = mapped_column(String(20), default="")
    margin: Mapped[str] = mapped_column(String(30), default="")
    notes: Mapped[str] = mapped_column(Text, default="")
    case: Mapped[LabCase] = relationship(back_populates="items")

    @property
    def tooth_list(self) -> list[str]:
        return self.teeth.split()
