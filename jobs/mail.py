"""RQ entry point for the mail outbox; the delivery itself is portal/mail/delivery.py."""
from __future__ import annotations

from jobs import app as _app


def send(mail_id: int) -> str:
    from portal.mail import delivery

    with _app().app_context():
        return delivery.send(mail_id)
