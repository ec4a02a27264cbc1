from __future__ import annotations

import datetime as dt

from sqlalchemy import DDL, DateTime, Index, Integer, String, Text, event
from sqlalchemy.orm import Mapped, mapped_column

from portal.extensions import db


class AuditEvent(db.Model):
    """Append-only: never updated or deleted. Each row carries the previous row's hash (docs/reliability.md A3)."""

    __table_args__ = (
        Index("ix_audit_event_practice_seq", "practice_id", "seq"),
        Index("ix_audit_event_entity", "entity_type", "entity_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)  # UTC
    practice_id: Mapped[int | None] = mapped_column(Integer)
    actor_type: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[str] = mapped_column(String(64), default="")
    actor_label: Mapped[str] = mapped_column(String(254), default="")
    on_behalf_of: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(64), index=True)
    entity_type: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[str] = mapped_column(String(64))
    before: Mapped[str] = mapped_column(Text, default="{}")  # canonical JSON
    after: Mapped[str] = mapped_column(Text, default="{}")
    source: Mapped[str] = mapped_column(String(120), default="")  # route or job
    ip: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(String(20), default="ok")
    correlation_id: Mapped[str] = mapped_column(String(64), default="")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # Which AUDIT_CHAIN_KEYS key signed the hash (portal/audit/keys.py); "" for the rows written
    # before the chain was keyed (plain SHA-256).
    key_id: Mapped[str] = mapped_column(String(16), default="", server_default="")


class AuditHead(db.Model):
    """One row: the chain's last sequence number and hash. Updating it first serialises writers,
    so concurrent transactions can never fork the chain."""

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    hash: Mapped[str] = mapped_column(String(64), default="")


event.listen(
    AuditHead.__table__, "after_create",
    DDL("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '')"),
)
