"""Connections to outside systems (scanner vendors today): the integration row with its encrypted
credentials, tokens, settings, sync cursor and last-sync fields, and the notifications vendors send.

Credentials and tokens are sealed with the key ring in portal/keyring.py.
"""
from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import Column, DateTime, Enum, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

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
