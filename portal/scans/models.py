"""The scans outside systems bring in, and the references to the scans' files.

Lab Manager keeps references (vendor artifact ids, URLs, a document store path), not scan files.
"""
from __future__ import annotations

import datetime as dt
import enum
import json

from sqlalchemy import BigInteger, Date, DateTime, Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db
from portal.integrations.vendor import Jaw, OrderStage, Vendor
from portal.practices.models import utcnow


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
    # An uploaded export's entries (portal/integrations/threeshape/export.py export_digest): the same
    # zip again is "unchanged" before anything is unpacked.
    source_digest: Mapped[str] = mapped_column(String(64), default="", server_default="", index=True)
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

    # The outbox sweep looks for files still being read after a while (portal/scans/uploads.py).
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
    # How sure the shape was ("sure: ..." / "not sure: ..."), or who set the jaw by hand; "" otherwise.
    jaw_note: Mapped[str] = mapped_column(String(200), default="", server_default="")
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
