from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal

from sqlalchemy import DateTime, Enum, ForeignKey, Integer, Numeric, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.clock import utcnow
from portal.extensions import db
from portal.keyring import Encrypted


class Channel(enum.StrEnum):
    API = "api"
    EMAIL = "email"
    MANUAL = "manual"


class Lab(db.Model):
    """A dental laboratory the organisation's practices send work to."""

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    channel: Mapped[Channel] = mapped_column(Enum(Channel, native_enum=False, length=10))
    contact_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    cc_emails: Mapped[str] = mapped_column(String(1000), default="")  # comma separated
    phone: Mapped[str] = mapped_column(String(40), default="")
    address: Mapped[str] = mapped_column(String(300), default="")
    api_url: Mapped[str] = mapped_column(String(500), default="")
    active: Mapped[bool] = mapped_column(default=True)
    notes: Mapped[str] = mapped_column(Text, default="")
    services: Mapped[list[LabService]] = relationship(
        back_populates="lab", cascade="all, delete-orphan", order_by="LabService.restoration"
    )
    secrets: Mapped[list[LabSecret]] = relationship(
        back_populates="lab", cascade="all, delete-orphan", order_by="LabSecret.id"
    )

    def service_for(self, restoration: str) -> LabService | None:
        return next((s for s in self.services if s.restoration == restoration), None)


class LabService(db.Model):
    """What a lab makes, in which materials, and how many business days it takes."""

    __table_args__ = (UniqueConstraint("lab_id", "restoration"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    lab_id: Mapped[int] = mapped_column(ForeignKey("lab.id"), index=True)
    restoration: Mapped[str] = mapped_column(String(40))
    materials: Mapped[str] = mapped_column(String(500), default="")  # comma separated
    turnaround_days: Mapped[int] = mapped_column(Integer)
    fee: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    lab: Mapped[Lab] = relationship(back_populates="services")

    @property
    def material_list(self) -> list[str]:
        return [m.strip() for m in self.materials.split(",") if m.strip()]


class LabSecret(db.Model):
    """A shared signing secret (whsec_...); two may be active during a rotation. Encrypted at rest
    with SCANNER_CREDENTIALS_KEYS (portal/keyring.py), read as the whsec_ text."""

    id: Mapped[int] = mapped_column(primary_key=True)
    lab_id: Mapped[int] = mapped_column(ForeignKey("lab.id"), index=True)
    secret: Mapped[str] = mapped_column(Encrypted())
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    lab: Mapped[Lab] = relationship(back_populates="secrets")
