"""iTero's Rx requests: an Rx sent from a case to the scanner, and a scan sent back to the doctor."""
from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import DateTime, Enum, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db
from portal.practices.models import utcnow


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
