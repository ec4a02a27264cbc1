"""The mail outbox: every email is a row first, then a job (docs/reliability.md D1 for mail)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from portal.clock import utcnow
from portal.extensions import db
from portal.keyring import Encrypted

PENDING, SENT, FAILED = "pending", "sent", "failed"
# Where a private link's secret part (a token) stands in the stored bodies (docs/reliability.md M1: the
# database holds no usable token): the delivery puts the token back in, from `link_secret`.
PLACEHOLDER = "[[lab-manager:private-link]]"
SCRUBBED = "[private link removed after delivery]"


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
    # The bodies as stored: a private link's token replaced by PLACEHOLDER (`text_body` and
    # `html_body` are the bodies as sent).
    stored_text: Mapped[str] = mapped_column("text_body", Text)
    stored_html: Mapped[str] = mapped_column("html_body", Text, default="")
    # The token PLACEHOLDER stands for, encrypted (SCANNER_CREDENTIALS_KEYS); dropped once the mail
    # is delivered or has failed for good, so the row then opens nothing. The dev mailbox keeps it
    # (its page is where the link is clicked in development).
    link_secret: Mapped[str | None] = mapped_column(Encrypted())
    state: Mapped[str] = mapped_column(String(10), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    @property
    def text_body(self) -> str:
        return self._render(self.stored_text)

    @property
    def html_body(self) -> str:
        return self._render(self.stored_html or "")

    def _render(self, body: str) -> str:
        if PLACEHOLDER not in body:
            return body
        return body.replace(PLACEHOLDER, self.link_secret or SCRUBBED)

    def drop_link_secret(self) -> None:
        """After delivery (or a final failure): the stored bodies say the link was removed."""
        if self.link_secret is not None or PLACEHOLDER in (self.stored_text + (self.stored_html or "")):
            self.stored_text = self.stored_text.replace(PLACEHOLDER, SCRUBBED)
            self.stored_html = (self.stored_html or "").replace(PLACEHOLDER, SCRUBBED)
            self.link_secret = None

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
