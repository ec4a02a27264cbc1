"""Queueing mail through the outbox, delivering it, and the sweep that re-enqueues what is stuck.

A request (or job) adds a MailMessage row in its transaction; `enqueue_after_commit` hands
its delivery job (SEND_MAIL, portal/mail/delivery.py) to RQ once that commits. If Redis is down then, or the job ran out of retries
while the SMTP server was away, the row stays pending and `sweep()` enqueues it again.
"""
from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterable
from email.message import EmailMessage
from email.utils import formatdate

from sqlalchemy import select

from portal import outbound
from portal.extensions import db
from portal.mail.models import PENDING, PLACEHOLDER, MailMessage, split_addresses
from portal.queue import SEND_MAIL, enqueue_after_commit, enqueue_now, get_queue

SWEEP_BATCH = 500


class TransientMailError(Exception):
    """The SMTP server is away or said 4xx: try again later."""


class PermanentMailError(Exception):
    """The SMTP server refused the message for good (5xx): retrying will not help."""


def _addresses(value: str | Iterable[str]) -> str:
    items = split_addresses(value) if isinstance(value, str) else [a.strip() for a in value if a and a.strip()]
    return ", ".join(dict.fromkeys(items))


def queue_mail(*, to: str | Iterable[str], subject: str, text: str, html: str = "", kind: str,
               cc: str | Iterable[str] = (), case_id: int | None = None, practice_id: int | None = None,
               lab_id: int | None = None, secret: str = "") -> MailMessage:
    """Add an outbox row to the current transaction and send it once that commits. `secret` (a
    private link's token) is kept only encrypted: the stored bodies hold a placeholder where it
    stood, and the delivery puts it back (docs/reliability.md M1)."""
    to_addrs = _addresses(to)
    if not to_addrs:
        raise ValueError("an email needs at least one recipient")
    already = {a.lower() for a in split_addresses(to_addrs)}
    cc_addrs = ", ".join(a for a in split_addresses(_addresses(cc)) if a.lower() not in already)
    if secret:
        if PLACEHOLDER in text or PLACEHOLDER in html or secret in subject:
            raise ValueError("a private link's token belongs in the body only")
        text, html = text.replace(secret, PLACEHOLDER), html.replace(secret, PLACEHOLDER)
    mail = MailMessage(
        to_addrs=to_addrs, cc_addrs=cc_addrs, subject=subject[:300], stored_text=text, stored_html=html,
        kind=kind, case_id=case_id, practice_id=practice_id, lab_id=lab_id, link_secret=secret or None,
        state=PENDING,
    )
    db.session.add(mail)
    db.session.flush()
    enqueue_after_commit(SEND_MAIL, mail.id, job_id=job_id(mail.id))
    return mail


def job_id(mail_id: int) -> str:
    return f"mail-{mail_id}"


def sweep(limit: int = SWEEP_BATCH) -> int:
    """Enqueue every pending mail whose job is not queued, running or scheduled; returns how many
    were handed to RQ. Safe to run any time: job ids are deterministic and the job checks state."""
    ids = db.session.scalars(
        select(MailMessage.id).where(MailMessage.state == PENDING).order_by(MailMessage.id).limit(limit)
    ).all()
    if not ids:
        return 0
    queue = get_queue()
    return sum(1 for mail_id in ids if enqueue_now(queue, SEND_MAIL, mail_id, job_id=job_id(mail_id)))


# ---- delivery (called by portal/mail/delivery.py) ----------------------------------------------

def build_message(mail: MailMessage, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to_addrs
    if mail.cc_addrs:
        message["Cc"] = mail.cc_addrs
    message["Subject"] = mail.subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = mail.message_id
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(mail.text_body)
    if mail.html_body:
        message.add_alternative(mail.html_body, subtype="html")
    return message


def deliver_smtp(mail: MailMessage, config) -> dict:
    """Hand the message to the SMTP server. Returns the recipients it refused (others got it).
    Raises TransientMailError or PermanentMailError."""
    message = build_message(mail, config["MAIL_FROM"])
    try:
        with outbound.SMTP(config["SMTP_HOST"], int(config["SMTP_PORT"]),
                           timeout=float(config["SMTP_TIMEOUT"])) as smtp:
            if config.get("SMTP_STARTTLS"):
                smtp.starttls(context=ssl.create_default_context())
            if config.get("SMTP_USERNAME"):
                smtp.login(config["SMTP_USERNAME"], config.get("SMTP_PASSWORD", ""))
            return smtp.send_message(message, to_addrs=mail.recipients)
    except outbound.BlockedAddress as exc:
        # A setting someone can fix (SMTP_HOST, OUTBOUND_ALLOWED_HOSTS): keep the mail pending.
        raise TransientMailError(f"SMTP_HOST: {exc}") from exc
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        text = "; ".join(f"{addr}: {code}" for addr, (code, _) in exc.recipients.items())
        if codes and all(500 <= code < 600 for code in codes):
            raise PermanentMailError(f"every recipient was refused ({text})") from exc
        raise TransientMailError(f"recipients refused for now ({text})") from exc
    except smtplib.SMTPAuthenticationError as exc:
        # A configuration problem someone can fix: keep the mail pending and retry.
        raise TransientMailError(f"SMTP login failed ({exc.smtp_code})") from exc
    except smtplib.SMTPResponseException as exc:
        reason = f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}"
        if 500 <= exc.smtp_code < 600:
            raise PermanentMailError(reason) from exc
        raise TransientMailError(reason) from exc
    except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timeout, DNS, disconnect
        raise TransientMailError(f"{exc.__class__.__name__}: {_text(str(exc))}") from exc


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value)[:300]
