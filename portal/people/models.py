from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import Date, DateTime, Enum, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db


class Patient(db.Model):
    __table_args__ = (
        UniqueConstraint("practice_id", "chart_number"),
        # Named: the naming convention uses only the first column, which the chart number's took.
        UniqueConstraint("practice_id", "external_id", name="uq_patient_practice_external_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"), index=True)
    chart_number: Mapped[str] = mapped_column(String(40))
    external_id: Mapped[str | None] = mapped_column(String(40))  # Open Dental PatNum, from a CSV import
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    date_of_birth: Mapped[dt.date | None] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(1), default="")  # F, M, X or blank
    phone: Mapped[str] = mapped_column(String(40), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    # What the practice management system says of the patient: "" for a current patient, else why
    # not ("deceased", "archived", "inactive", "not a patient", "prospective"); written by the sync
    # (portal/integrations/pms.py), shown on the patient's cases.
    pms_standing: Mapped[str] = mapped_column(String(20), default="", server_default="")

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @property
    def sort_name(self) -> str:
        return f"{self.last_name}, {self.first_name}"


class Provider(db.Model):
    __table_args__ = (
        UniqueConstraint("practice_id", "abbr"),
        UniqueConstraint("practice_id", "external_id", name="uq_provider_practice_external_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"), index=True)
    abbr: Mapped[str] = mapped_column(String(20))  # Open Dental's provider abbreviation
    external_id: Mapped[str | None] = mapped_column(String(40))  # Open Dental ProvNum, from a CSV import
    name: Mapped[str] = mapped_column(String(200))
    license_number: Mapped[str] = mapped_column(String(40), default="")
    active: Mapped[bool] = mapped_column(default=True)


class AppointmentKind(enum.StrEnum):
    SEAT = "seat"
    TRY_IN = "try_in"
    OTHER = "other"


class Appointment(db.Model):
    __table_args__ = (
        UniqueConstraint("practice_id", "external_id"),
        Index("ix_appointment_practice_starts", "practice_id", "starts_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    provider_id: Mapped[int | None] = mapped_column(ForeignKey("provider.id"))
    starts_at: Mapped[dt.datetime] = mapped_column(DateTime)
    kind: Mapped[AppointmentKind] = mapped_column(
        Enum(AppointmentKind, native_enum=False, length=20), default=AppointmentKind.OTHER
    )
    external_id: Mapped[str | None] = mapped_column(String(40))  # Open Dental AptNum
    note: Mapped[str] = mapped_column(String(500), default="")
    # The PMS's own word for the visit (Open Dental's AptStatus: Scheduled, Complete, Broken,
    # UnschedList...), "" for a visit entered here; portal/integrations/pms.py keeps it.
    pms_status: Mapped[str] = mapped_column(String(20), default="")
    # "" for a visit that will happen; else why the PMS says it will not ("broken", "unscheduled",
    # "planned", "a note", "deleted"). Such a visit is never offered or chosen as a seat appointment.
    not_happening: Mapped[str] = mapped_column(String(20), default="", server_default="")
    patient: Mapped["Patient"] = relationship()
    provider: Mapped["Provider | None"] = relationship()

    @property
    def day(self) -> dt.date:
        return self.starts_at.date()
