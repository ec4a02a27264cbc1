from __future__ import annotations

import datetime as dt
import enum
import json
import uuid

from sqlalchemy import DateTime, Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.clock import utcnow
from portal.extensions import db
from portal.labs.models import Channel


class DispatchState(enum.StrEnum):
    PENDING = "pending"  # waiting for (another) attempt at next_attempt_at
    SENDING = "sending"  # an attempt holds the row until next_attempt_at (its lease)
    DELIVERED = "delivered"
    FAILED = "failed"  # permanent refusal or attempts used up; a person may retry
    SUPERSEDED = "superseded"  # the case was sent again (after a rescan) or is no longer at this lab

    @property
    def label(self) -> str:
        return {"pending": "Waiting to send", "sending": "Sending", "delivered": "Delivered",
                "failed": "Dispatch failed", "superseded": "Superseded"}[self.value]


# A delivery that failed this many attempts and waits for the next says so on the board and the
# case page ("retrying, next attempt at ..."); one failure is routine (the next try is seconds away).
RETRYING_AFTER = 2


def new_id() -> str:
    return str(uuid.uuid4())


class Delivery:
    """The columns of an outbox row to a lab's API (a work order or an order event): what to send,
    and where its attempts stand. portal/dispatch/services.py claims, finishes and retries both."""

    state: Mapped[DispatchState] = mapped_column(
        Enum(DispatchState, native_enum=False, length=12), default=DispatchState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=6)  # raised by a manual retry
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Dispatch(Delivery, db.Model):
    """One approved sending of a case to its lab: the outbox row (docs/reliability.md D1-D4).

    `id` is the work order's `order_id` and its `Idempotency-Key`; `webhook_id` is the signed
    message id. Both stay the same on every retry. `payload` is the work order as approved.
    """

    __table_args__ = (
        Index("ix_dispatch_due", "state", "next_attempt_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    case_id: Mapped[int] = mapped_column(ForeignKey("lab_case.id"), index=True)
    lab_id: Mapped[int] = mapped_column(ForeignKey("lab.id"), index=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"), index=True)
    channel: Mapped[Channel] = mapped_column(Enum(Channel, native_enum=False, length=10))
    lab_reference: Mapped[str] = mapped_column(String(100), default="")
    webhook_id: Mapped[str] = mapped_column(String(64), unique=True)
    approved_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))

    case = relationship("LabCase")
    lab = relationship("Lab")
    approved_by = relationship("User")

    @property
    def job_id(self) -> str:
        """The RQ job id of the next attempt (deterministic: the sweep and the relay agree)."""
        return f"dispatch-{self.id}-{self.attempts + 1}"


class LabEvent(db.Model):
    """A status event a lab posted, kept so a repeat (same event id or webhook id) has no effect (docs/reliability.md W4).

    The endpoint stores it "pending" (the inbox) with its verified body, and a job applies it to
    the case after the commit; the outbox sweep re-enqueues any still pending.
    """

    __table_args__ = (
        # Named: the naming convention would call both uq_lab_event_lab_id.
        UniqueConstraint("lab_id", "event_id", name="uq_lab_event_lab_id_event_id"),
        UniqueConstraint("lab_id", "webhook_id", name="uq_lab_event_lab_id_webhook_id"),
        Index("ix_lab_event_outcome", "outcome"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    lab_id: Mapped[int] = mapped_column(ForeignKey("lab.id"))
    event_id: Mapped[str] = mapped_column(String(100))
    webhook_id: Mapped[str] = mapped_column(String(100))
    dispatch_id: Mapped[str] = mapped_column(ForeignKey("dispatch.id"), index=True)
    type: Mapped[str] = mapped_column(String(30))
    occurred_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    outcome: Mapped[str] = mapped_column(String(20))  # pending, then applied, noop or ignored
    payload_sha256: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text, default="")  # the verified body as JSON, for the job
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class NoticeType(enum.StrEnum):
    """What the practice changed on a case its lab already has (docs/lab-api.md, order events)."""

    CANCELLED = "cancelled"
    DUE_DATE_CHANGED = "due_date_changed"
    PRESCRIPTION_CHANGED = "prescription_changed"
    MESSAGE = "message"

    @property
    def label(self) -> str:
        return {"cancelled": "Cancellation", "due_date_changed": "New due date",
                "prescription_changed": "Prescription change", "message": "Message"}[self.value]


class OrderNotice(Delivery, db.Model):
    """One order event to a lab's API: the outbox row of a change the lab must hear of.

    It goes through the same states as a dispatch (DispatchState) and the same machinery: written in
    the transaction of the change, relayed to RQ after the commit, claimed with a lease, retried
    with capped backoff and jitter, swept when its job is lost. `event_id` is the body's event_id;
    `webhook_id` is derived from it, so both stay the same on every retry and the lab can drop a
    repeat. `payload` is the event as it was when the change was made.

    Notices of one order (`dispatch_id`) go in `id` order, and none before the work order itself
    has been delivered (portal/dispatch/notices.py explains how).
    """

    __table_args__ = (
        Index("ix_order_notice_due", "state", "next_attempt_at"),
        Index("ix_order_notice_dispatch_state", "dispatch_id", "state"),
        Index("ix_order_notice_case_state", "case_id", "state"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    dispatch_id: Mapped[str] = mapped_column(ForeignKey("dispatch.id"))
    case_id: Mapped[int] = mapped_column(ForeignKey("lab_case.id"))
    lab_id: Mapped[int] = mapped_column(ForeignKey("lab.id"))
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"), index=True)
    type: Mapped[NoticeType] = mapped_column(Enum(NoticeType, native_enum=False, length=24))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("lab_message.id"))  # a message notice

    dispatch = relationship("Dispatch")

    @property
    def webhook_id(self) -> str:
        return "msg_" + self.event_id.replace("-", "")

    @property
    def job_id(self) -> str:
        """The RQ job id of the next attempt (deterministic: the relay, the chain and the sweep agree)."""
        return f"notice-{self.id}-{self.attempts + 1}"

    @property
    def waits_for_order(self) -> bool:
        """Pending, but the work order has not reached the lab yet: it goes right after it."""
        return self.state is DispatchState.PENDING and self.dispatch.state is not DispatchState.DELIVERED

    @property
    def summary(self) -> str:
        """What the lab is told, in a few words, for the case page."""
        data = (json.loads(self.payload).get("data") if self.payload else None) or {}
        if self.type is NoticeType.DUE_DATE_CHANGED:
            return f"due {data.get('due_date') or 'not set'} (was {data.get('previous') or 'not set'})"
        if self.type is NoticeType.PRESCRIPTION_CHANGED:
            count = len(data.get("items") or [])
            return f"{count} item{'s' if count != 1 else ''} and the instructions as they are now"
        text = data.get("reason" if self.type is NoticeType.CANCELLED else "text") or ""
        return f"“{text[:60]}{'…' if len(text) > 60 else ''}”" if text else ""

    @property
    def state_label(self) -> str:
        if self.waits_for_order:
            return "Waits for the work order"
        if self.state is DispatchState.PENDING and self.attempts:
            return "Retrying"
        return {"pending": "Waiting to send", "sending": "Sending", "delivered": "Delivered",
                "failed": "Not delivered", "superseded": "Withdrawn"}[self.state.value]
