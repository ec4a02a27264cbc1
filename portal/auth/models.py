from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db
from portal.practices.models import User, utcnow


class UserSession(db.Model):
    """One sign-in on one browser (ASVS 3.3). The session cookie carries a random key; only its
    SHA-256 is stored. Every request finds its row: ended, idle too long or past its absolute
    lifetime, the cookie opens nothing, whichever copy of it is presented."""

    __table_args__ = (Index("ix_user_session_user_open", "user_id", "ended_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # signed_out, signed_out_everywhere, password_changed, deactivated
    end_reason: Mapped[str] = mapped_column(String(40), default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(200), default="")
    user: Mapped[User] = relationship()
