"""Deliver one outbox email: `send(mail_id)`, the body of the SEND_MAIL job (job id `mail-<id>`).

Idempotent: the row's state is the guard (a sent or failed mail is left alone) and the
Message-ID stays the same across attempts. A transient SMTP problem raises, so RQ retries it
(`Retry` with back-off) and the row stays pending for `portal.mail.services.sweep`; a permanent
refusal marks the row failed and raises too, without further retries. Nothing is swallowed.
"""
from __future__ import annotations

import logging

from flask import current_app

from portal.audit.actor import Actor
from portal.audit.record import record
from portal.dispatch.services import email_outcome
from portal.extensions import db
from portal.mail.models import FAILED, PENDING, SENT, MailMessage
from portal.mail.services import PermanentMailError, TransientMailError, deliver_smtp
from portal.practices.models import utcnow
from portal.queue import SEND_MAIL

log = logging.getLogger(__name__)
ACTOR = Actor.job(SEND_MAIL.func)
DEFAULT_MAX_ATTEMPTS = 12


def send(mail_id: int) -> str:
    """In the caller's app context (jobs/mail.py pushes one)."""
    config = current_app.config
    mail = db.session.get(MailMessage, mail_id, with_for_update=True)
    if mail is None:
        log.warning("mail %s is gone; nothing to send", mail_id)
        return "missing"
    if mail.state != PENDING:
        db.session.rollback()
        return mail.state
    mail.attempts += 1
    db.session.commit()  # the attempt counts even if the process dies while sending

    backend = config.get("MAIL_BACKEND", "smtp")
    try:
        refused = _deliver(mail, backend, config)
    except PermanentMailError as exc:
        _fail(mail, str(exc))
        _no_more_retries()
        raise
    except TransientMailError as exc:
        mail.last_error = str(exc)[:500]
        if mail.attempts >= int(config.get("MAIL_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)):
            _fail(mail, f"gave up after {mail.attempts} attempts: {exc}")
            _no_more_retries()
        else:
            db.session.commit()
            log.warning("mail %s not sent yet (attempt %s): %s", mail.id, mail.attempts, exc)
        raise

    mail.state, mail.sent_at = SENT, utcnow()
    mail.last_error = f"refused: {', '.join(sorted(refused))}"[:500] if refused else ""
    if backend != "devmailbox":
        mail.drop_link_secret()  # the recipient has the link; the database keeps no usable token
    record("mail.sent", "mail_message", mail.id, before={"state": PENDING},
           after={"state": SENT, "kind": mail.kind, "attempts": mail.attempts, "backend": backend},
           actor=ACTOR, practice_id=mail.practice_id)
    _dispatch_follows(mail, sent=True)
    db.session.commit()
    log.info("mail %s (%s) %s", mail.id, mail.kind, "captured" if backend == "devmailbox" else "sent")
    return SENT


def _deliver(mail: MailMessage, backend: str, config) -> dict:
    if backend == "devmailbox":
        return {}  # captured: the row itself is the dev mailbox
    if backend != "smtp":
        raise PermanentMailError(f"MAIL_BACKEND {backend!r} is not 'smtp' or 'devmailbox'")
    return deliver_smtp(mail, config)


def _fail(mail: MailMessage, reason: str) -> None:
    mail.state, mail.last_error = FAILED, reason[:500]
    mail.drop_link_secret()  # never sent, never will be: a resend makes a new link
    record("mail.failed", "mail_message", mail.id, before={"state": PENDING},
           after={"state": FAILED, "kind": mail.kind, "attempts": mail.attempts, "error": reason[:200]},
           actor=ACTOR, practice_id=mail.practice_id, outcome="failed")
    _dispatch_follows(mail, sent=False, error=reason)
    db.session.commit()
    log.error("mail %s failed: %s", mail.id, reason)


WORK_ORDER_KINDS = ("work_order", "new_link")


def _dispatch_follows(mail: MailMessage, sent: bool, error: str = "") -> None:
    """A work order's email is the email lab's dispatch: its outcome is the dispatch's."""
    if mail.kind in WORK_ORDER_KINDS and mail.case_id:
        email_outcome(mail.case_id, sent, error, ACTOR)


def _no_more_retries() -> None:
    """The row is failed for good: tell RQ not to schedule the retries it was enqueued with."""
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        job.retries_left = 0
