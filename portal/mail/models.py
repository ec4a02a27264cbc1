"""The mail outbox: every email is a row first, then a job (docs/reliability.md D1 for mail)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from portal.clock import utcnow
from portal.extensions import db

PENDING, SENT, FAILED = "pending", "sent", "failed"


class MailMessage(db.Model):
    """One email. `state` moves pending -> sent or pending -> failed, only in jobs.mail.send."""

    __table_args__ = (Index("ix_mail_message_state_created", "state", "created_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    practice_id: Mapped[int | None] = mapped_column(ForeignKey("practice.id"), index=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("lab_case.id"), index=True)
    lab_id: Mapped[int | None] = mapped_column(ForeignKey("lab.id"))
    kind: Mapped[str] = mapped_column(String(40))  # work_order, due_date, cancelled, message, new_link
    to_addrs: Mapped[str] = mapped_column(String(1000))  # comma separated
    cc_addrs: Mapped[str] = mapped_column(String(1000), default="")
    subject: Mapped[str] = mapped_column(String(300))
    text_body: Mapped[str] = mapped_column(Text)
    html_body: Mapped[str] = mapped_column(Text, default="")
    # Text to remove from the stored bodies once delivered over SMTP (a private link's token):
    # the database keeps only the hash of a link after the lab has its copy.
    scrub: Mapped[str] = mapped_column(String(200), default="")
    state: Mapped[str] = mapped_column(String(10), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    @property
    def recipients(self) -> list[str]:
        seen: dict[str, str] = {}
        for address in split_addresses(self.to_addrs) + split_addresses(self.cc_addrs):
            seen.setdefault(address.lower(), address)
        return list(seen.values())

    @property
    def message_id(self) -> str:
        """The same Message-ID on every attempt, so a receiving system can drop a duplicate."""
        return f"<mail-{self.id}.{self.created_at:%Y%m%d%H%M%S}@labmanager>"


def split_addresses(text: str) -> list[str]:
    return [a.strip() for a in (text or "").replace(";", ",").split(",") if a.strip()]
