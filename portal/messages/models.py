from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from portal.clock import utcnow
from portal.extensions import db

IN, OUT = "in", "out"  # from the lab to the practice, and from the practice to the lab


class LabMessage(db.Model):
    """A note between the practice and the lab about one case."""

    __table_args__ = (
        Index("ix_lab_message_case_created", "case_id", "created_at"),
        # The top bar's unread count: practice, incoming, not read.
        Index("ix_lab_message_unread", "practice_id", "direction", "read_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"))
    case_id: Mapped[int] = mapped_column(ForeignKey("lab_case.id"))
    lab_id: Mapped[int | None] = mapped_column(ForeignKey("lab.id"))
    direction: Mapped[str] = mapped_column(String(3))
    author: Mapped[str] = mapped_column(String(200), default="")
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    read_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # The email that carried an outgoing message to an email lab (an API lab's is an OrderNotice).
    mail_id: Mapped[int | None] = mapped_column(ForeignKey("mail_message.id"))

    @property
    def incoming(self) -> bool:
        return self.direction == IN
