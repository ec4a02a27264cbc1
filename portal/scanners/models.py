"""Scanner integrations, the scans they bring in, and the references to the scans' files.

Lab Manager keeps references (vendor artifact ids, URLs, a document store path), not scan files
(seed 000). Credentials and tokens are encrypted at rest (portal/scanners/crypto.py).
"""
from __future__ import annotations

import datetime as dt
import enum
import json

from sqlalchemy import (
    BigInteger, Column, Date, DateTime, Enum, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db
from portal.practices.models import utcnow
from portal.scanners.vendor import Jaw, OrderStage, Vendor

integration_lab = Table(
    "integration_lab",
    db.metadata,
    Column("integration_id", ForeignKey("scanner_integration.id", ondelete="CASCADE"), primary_key=True),
    Column("lab_id", ForeignKey("lab.id"), primary_key=True),
)


class ScannerIntegration(db.Model):
    """One connection of a practice to a scanner vendor (Admin Control Plane, seed 000).

    `credentials` and `tokens` hold encrypted JSON (the client id and secret, a webhook signing
    secret; the access and refresh tokens). `settings` is plain JSON for what is not secret: hosts,
    the paired account, the discovered endpoints, a watched folder. `token_version` and
    `refresh_lease_until` let two jobs that find an expired token make exactly one refresh call
    (RELIABILITY W7). `callback_key_hash` is the hash of the unguessable part of the URL the vendor
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


class InboxState(enum.StrEnum):
    PENDING = "pending"  # waits for a person: no patient matched, or no case could be chosen
    WAITING = "waiting"  # still being scanned at the vendor (no files yet): joins a case when complete
    LINKED = "linked"  # belongs to a case
    DISMISSED = "dismissed"  # a person set it aside (a test scan, a duplicate)

    @property
    def label(self) -> str:
        return {"pending": "Needs a person", "waiting": "At the vendor", "linked": "On a case",
                "dismissed": "Dismissed"}[self.value]


class Scan(db.Model):
    """One scan order from a vendor, as last reported, and where it landed (the scan inbox).

    The key that stays the same through every flow is (practice, vendor, order_id). The patient as
    the scanner knows them is kept beside the matched patient, so a person can match it by hand.
    """

    __table_args__ = (
        UniqueConstraint("practice_id", "vendor", "order_id", name="uq_scan_practice_vendor_order"),
        Index("ix_scan_practice_inbox", "practice_id", "inbox", "received_at"),
        Index("ix_scan_rx", "practice_id", "rx_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"))
    integration_id: Mapped[int | None] = mapped_column(ForeignKey("scanner_integration.id"), index=True)
    vendor: Mapped[Vendor] = mapped_column(Enum(Vendor, native_enum=False, length=10))
    order_id: Mapped[str] = mapped_column(String(100))
    rx_id: Mapped[str] = mapped_column(String(100), default="")
    source: Mapped[str] = mapped_column(String(20), default="")  # poll, callback, webhook, upload, folder
    status: Mapped[str] = mapped_column(String(60), default="")  # the vendor's own word
    stage: Mapped[OrderStage] = mapped_column(Enum(OrderStage, native_enum=False, length=16))
    vendor_updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    scanned_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    content_key: Mapped[str] = mapped_column(String(64), default="")
    patient_first_name: Mapped[str] = mapped_column(String(100), default="")
    patient_last_name: Mapped[str] = mapped_column(String(100), default="")
    patient_chart_number: Mapped[str] = mapped_column(String(40), default="")
    patient_dob: Mapped[dt.date | None] = mapped_column(Date)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"), index=True)
    matched_by: Mapped[str] = mapped_column(String(20), default="")  # chart, name_dob, person
    case_id: Mapped[int | None] = mapped_column(ForeignKey("lab_case.id"), index=True)
    doctor_name: Mapped[str] = mapped_column(String(200), default="")
    procedure: Mapped[str] = mapped_column(String(100), default="")
    items: Mapped[str] = mapped_column(Text, default="[]")  # the scanner's prescription, JSON
    notes: Mapped[str] = mapped_column(Text, default="")
    lab_name: Mapped[str] = mapped_column(String(200), default="")  # the lab the vendor names
    lab_ref: Mapped[str] = mapped_column(String(100), default="")
    due_date: Mapped[dt.date | None] = mapped_column(Date)
    history: Mapped[str] = mapped_column(Text, default="[]")  # the vendor's status history, JSON
    inbox: Mapped[InboxState] = mapped_column(
        Enum(InboxState, native_enum=False, length=12), default=InboxState.PENDING)
    problem: Mapped[str] = mapped_column(String(300), default="")  # why a person is needed
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    integration = relationship("ScannerIntegration")
    patient = relationship("Patient")
    case = relationship("LabCase")
    files: Mapped[list[ScanFile]] = relationship(
        back_populates="scan", cascade="all, delete-orphan", order_by="ScanFile.id")

    @property
    def patient_label(self) -> str:
        name = f"{self.patient_first_name} {self.patient_last_name}".strip() or "No name"
        return name

    @property
    def current_files(self) -> list[ScanFile]:
        return [f for f in self.files if f.replaced_at is None]

    @property
    def history_list(self) -> list[dict]:
        return json.loads(self.history or "[]")

    @property
    def item_list(self) -> list[dict]:
        return json.loads(self.items or "[]")


class FileState(enum.StrEnum):
    OK = "ok"  # a mesh that was read: counts known
    REFERENCE = "reference"  # a reference only: a vendor artifact, or a format not parsed (.dcm, .3ml)
    PROCESSING = "processing"  # a large file a job is reading
    REFUSED = "refused"  # broken or not a mesh; `error` says why

    @property
    def label(self) -> str:
        return {"ok": "Checked", "reference": "Reference", "processing": "Checking",
                "refused": "Refused"}[self.value]


class ScanFile(db.Model):
    """A reference to one file of a scan: the vendor's artifact id or a document store path.

    When a rescan brings new files, the old references stay (the history is true) with
    `replaced_at` set. A bite scan points at the upper and lower arch of the same scan.
    """

    # The outbox sweep looks for files still being read after a while (portal/scanners/uploads.py).
    __table_args__ = (Index("ix_scan_file_state_created", "state", "created_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scan.id"), index=True)
    ref: Mapped[str] = mapped_column(String(300))
    file_name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(10))
    kind: Mapped[str] = mapped_column(String(20), default="scan")
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    jaw: Mapped[Jaw] = mapped_column(Enum(Jaw, native_enum=False, length=10), default=Jaw.UNKNOWN)
    jaw_source: Mapped[str] = mapped_column(String(20), default="")
    url: Mapped[str] = mapped_column(String(1000), default="")
    vertex_count: Mapped[int | None] = mapped_column(BigInteger)
    triangle_count: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[FileState] = mapped_column(Enum(FileState, native_enum=False, length=12),
                                             default=FileState.REFERENCE)
    progress: Mapped[int] = mapped_column(Integer, default=0)  # percent, while PROCESSING
    error: Mapped[str] = mapped_column(String(300), default="")
    upper_file_id: Mapped[int | None] = mapped_column(ForeignKey("scan_file.id"))  # a bite's arches
    lower_file_id: Mapped[int | None] = mapped_column(ForeignKey("scan_file.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    replaced_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    scan: Mapped[Scan] = relationship(back_populates="files")


class VendorEvent(db.Model):
    """A vendor's notification (iTero's scan callback, a Medit webhook), stored before it is acted on.

    The request verifies, stores and enqueues (W5); a job re-reads the order through the vendor's
    API (W6). `event_key` makes a repeat delivery a no-op (W4): the vendor's event id where there is
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


class RxState(enum.StrEnum):
    PENDING = "pending"  # waiting for the job that creates it at the scanner
    CREATED = "created"  # the scanner has it (rx_id set)
    SCANNED = "scanned"  # a scan arrived for it
    DELETE_PENDING = "delete_pending"
    DELETED = "deleted"
    FAILED = "failed"

    @property
    def label(self) -> str:
        return {"pending": "Sending to the scanner", "created": "Waiting for the scan", "scanned": "Scanned",
                "delete_pending": "Withdrawing", "deleted": "Withdrawn", "failed": "Failed"}[self.value]


class ScanRequest(db.Model):
    """An Rx sent from a case to a scanner (iTero's Scan Request), so the chairside scan comes back
    to this case: the scan that arrives with this `rx_id` joins it."""

    __table_args__ = (Index("ix_scan_request_rx", "integration_id", "rx_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"), index=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("lab_case.id"), index=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("scanner_integration.id"))
    rx_id: Mapped[str] = mapped_column(String(100), default="")
    state: Mapped[RxState] = mapped_column(Enum(RxState, native_enum=False, length=16), default=RxState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(String(300), default="")
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    integration = relationship("ScannerIntegration")
    case = relationship("LabCase")


class RescanState(enum.StrEnum):
    PENDING = "pending"  # waiting for the job that asks the vendor
    SENT = "sent"  # the vendor sent the scan back to the doctor
    FAILED = "failed"

    @property
    def label(self) -> str:
        return {"pending": "Asking the scanner", "sent": "Sent back to the doctor", "failed": "Failed"}[self.value]


class RescanRequest(db.Model):
    """The practice asked the scanner vendor to send a case's scan back to the doctor for a rescan
    (iTero's Return to doctor). Written with the request, then a job asks the vendor (outbox); the
    rescan comes back as the same order with new files and joins the case like any report."""

    __table_args__ = (Index("ix_rescan_request_state", "state", "updated_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"), index=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("lab_case.id"), index=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scan.id"))
    integration_id: Mapped[int] = mapped_column(ForeignKey("scanner_integration.id"))
    order_id: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(500))
    state: Mapped[RescanState] = mapped_column(Enum(RescanState, native_enum=False, length=12),
                                               default=RescanState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(String(300), default="")
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    integration = relationship("ScannerIntegration")
    case = relationship("LabCase")
    scan = relationship("Scan")
