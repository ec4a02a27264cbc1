"""Connections to outside systems (scanner vendors today): the integration row with its encrypted
credentials, tokens, settings, sync cursor and last-sync fields, and the notifications vendors send.

Credentials and tokens are sealed with the key ring in portal/keyring.py.
"""
from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import Column, DateTime, Enum, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.dispatch.models import Delivery, DispatchState  # noqa: F401 (the outbox columns)
from portal.extensions import db
from portal.integrations.vendor import Vendor
from portal.practices.models import utcnow

integration_lab = Table(
    "integration_lab",
    db.metadata,
    Column("integration_id", ForeignKey("scanner_integration.id", ondelete="CASCADE"), primary_key=True),
    Column("lab_id", ForeignKey("lab.id"), primary_key=True),
)


class ScannerIntegration(db.Model):
    """One connection of a practice to a scanner vendor (Admin Control Plane, docs/sources.md source 000).

    `credentials` and `tokens` hold encrypted JSON (the client id and secret, a webhook signing
    secret; the access and refresh tokens). `settings` is plain JSON for what is not secret: hosts,
    the paired account, the discovered endpoints, a watched folder. `token_version` and
    `refresh_lease_until` let two jobs that find an expired token make exactly one refresh call
    (docs/reliability.md W7). `callback_key_hash` is the hash of the unguessable part of the URL the vendor
    calls us on.
    """

    __table_args__ = (Index("ix_scanner_integration_practice", "practice_id", "vendor"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"))
    vendor: Mapped[Vendor] = mapped_column(Enum(Vendor, native_enum=False, length=10))
    name: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(default=True)
    credentials: Mapped[str] = mapped_column(Text, default="")
    tokens: Mapped[str] = mapped_column(Text, default="")
    token_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    refresh_lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime)
    settings: Mapped[str] = mapped_column(Text, default="{}")
    callback_key_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    connected_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    sync_cursor: Mapped[str] = mapped_column(String(64), default="")
    last_sync_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_success_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    last_error_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    labs = relationship("Lab", secondary=integration_lab, order_by="Lab.name")

    @property
    def config(self) -> dict:
        return json.loads(self.settings or "{}")

    def set_config(self, **values) -> None:
        data = self.config
        data.update(values)
        self.settings = json.dumps(data, sort_keys=True)

    @property
    def connected(self) -> bool:
        return self.connected_at is not None

    @property
    def status_label(self) -> str:
        if not self.active:
            return "Paused"
        if self.last_error:
            return "Error"
        if self.vendor is not Vendor.THREESHAPE and not self.connected:
            return "Not connected"
        return "Connected"


class VendorEvent(db.Model):
    """A vendor's notification (iTero's scan callback, a Medit webhook), stored before it is acted on.

    The request verifies, stores and enqueues (docs/reliability.md W5); a job re-reads the order through the vendor's
    API (docs/reliability.md W6). `event_key` makes a repeat delivery a no-op (W4): the vendor's event id where there is
    one, else a digest of the body.
    """

    __table_args__ = (
        UniqueConstraint("integration_id", "event_key", name="uq_vendor_event_integration_key"),
        Index("ix_vendor_event_outcome", "outcome"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("scanner_integration.id"))
    event_key: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(40))
    order_ref: Mapped[str] = mapped_column(String(100), default="")  # the order (or Rx) to re-read
    outcome: Mapped[str] = mapped_column(String(20), default="pending")  # pending, done, ignored, failed
    error: Mapped[str] = mapped_column(String(300), default="")
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    handled_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


# -- practice management systems (portal/integrations/pms.py) ------------------------------------------

class PmsLaboratory(db.Model):
    """A laboratory as the practice's PMS lists it (Open Dental's LaboratoryNum is `ref`), linked
    once by an admin to one of Lab Manager's labs, so lab cases written back name the right one."""

    __table_args__ = (UniqueConstraint("integration_id", "ref", name="uq_pms_laboratory_integration_ref"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("scanner_integration.id", ondelete="CASCADE"))
    ref: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(40), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    hidden: Mapped[bool] = mapped_column(default=False)
    lab_id: Mapped[int | None] = mapped_column(ForeignKey("lab.id"))

    lab = relationship("Lab")


class PmsMatch(db.Model):
    """A PMS patient that matches more than one patient here by name and birth date: it waits for a
    person to choose (or to say it is a new patient), like a scan in the inbox. `payload` is the
    row as the PMS sent it (parsed); `candidates` the ids of the patients it could be."""

    __table_args__ = (UniqueConstraint("integration_id", "resource", "ref", name="uq_pms_match_integration_ref"),
                      Index("ix_pms_match_state", "integration_id", "state"))
    id: Mapped[int] = mapped_column(primary_key=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("scanner_integration.id", ondelete="CASCADE"))
    resource: Mapped[str] = mapped_column(String(20), default="patients")
    ref: Mapped[str] = mapped_column(String(40))
    payload: Mapped[str] = mapped_column(Text, default="{}")
    candidates: Mapped[str] = mapped_column(String(500), default="")
    state: Mapped[str] = mapped_column(String(20), default="waiting")  # waiting, linked, created
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    @property
    def data(self) -> dict:
        return json.loads(self.payload or "{}")

    @property
    def candidate_ids(self) -> list[int]:
        return [int(x) for x in self.candidates.split(",") if x]


class PmsLabCase(Delivery, db.Model):
    """A case's lab case in the practice's PMS, and the outbox of the writes that keep it current.

    One row per case and integration. A change the PMS must hear of (sent, received, checked in,
    a new due date) sets it pending in the change's own transaction; the job claims it with a
    lease, writes the case as it is then (`POST /labcases` the first time, `PUT` after), and
    finishes it with the same claim, backoff and audit as a lab dispatch (portal/dispatch/services.py).
    `ref` is the PMS's key of the lab case (Open Dental's LabCaseNum) once known; `again` says the
    case changed while a write was under way, so one more write follows. `unsure` says an earlier
    create may have been carried out without our hearing of it: before creating, the job looks for
    it (the marker in the instructions).
    """

    __table_args__ = (UniqueConstraint("integration_id", "case_id", name="uq_pms_lab_case_integration_case"),
                      Index("ix_pms_lab_case_due", "state", "next_attempt_at"))
    id: Mapped[int] = mapped_column(primary_key=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("scanner_integration.id", ondelete="CASCADE"))
    case_id: Mapped[int] = mapped_column(ForeignKey("lab_case.id"), index=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"))
    ref: Mapped[str] = mapped_column(String(40), default="")
    again: Mapped[bool] = mapped_column(default=False)
    unsure: Mapped[bool] = mapped_column(default=False)
    last_reason: Mapped[str] = mapped_column(String(40), default="")  # what asked for the last write

    integration = relationship("ScannerIntegration")

    @property
    def job_id(self) -> str:
        return f"pms-labcase-{self.id}-{self.attempts + 1}"
