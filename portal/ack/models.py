from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.clock import utcnow
from portal.extensions import db


class AckLink(db.Model):
    """A lab's private link to one case (docs/reliability.md M1): only the token's SHA-256 is kept,
    bound to one dispatch, case and lab; it expires and can be revoked."""

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    dispatch_id: Mapped[str | None] = mapped_column(ForeignKey("dispatch.id"), index=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("lab_case.id"), index=True)
    lab_id: Mapped[int] = mapped_column(ForeignKey("lab.id"))
    practice_id: Mapped[int] = mapped_column(ForeignKey("practice.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    revoked_reason: Mapped[str] = mapped_column(String(40), default="")
    last_action_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # a POST, never a GET

    case = relationship("LabCase")
    lab = relationship("Lab")

    def problem(self, now: dt.datetime) -> str:
        """"" when usable, else "revoked" or "expired"."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        return ""

    @property
    def current_problem(self) -> str:
        return self.problem(utcnow())
