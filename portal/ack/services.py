"""Private links for labs without an API (docs/reliability.md M1-M5), and the mail that carries them.

- `prepare_email_dispatch(dispatch)`: part of "Approve and send" for an email lab. In the
  caller's transaction: revoke the case's older links, issue a new one bound to this dispatch,
  case and lab, and queue the work-order email through the outbox.
- `resolve(token)`: the link behind a token, or why there is none (unknown, expired, revoked).
- `lab_move` / `lab_message`: what the lab does on its page, as `Actor.lab`, audited.
- `notify_lab(case, kind, detail)`: tell an email lab that the practice changed the due date,
  cancelled the case or wrote to it (called by portal.labcomm.services.tell_lab, which tells an
  API lab through its API instead).

Tokens are `secrets.token_urlsafe(32)` (256 bits); only their SHA-256 is stored. The outbox row
holds the token only encrypted, in place of the link in its bodies, until the SMTP server has
taken the mail (portal/mail/delivery.py drops it then).
Services flush; the caller commits.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from flask import current_app, render_template
from sqlalchemy import select

from portal import tokens
from portal.ack.models import AckLink
from portal.audit.actor import Actor
from portal.audit.record import record
from portal.cases import lifecycle
from portal.cases.models import LabCase
from portal.cases.status import Status
from portal.clock import utcnow
from portal.extensions import db
from portal.labs.models import Channel, Lab
from portal.mail.models import MailMessage
from portal.mail.services import queue_mail
from portal.messages.services import record_lab_message
from portal.practices.models import Practice



class LinkError(ValueError):
    """A link can't be issued (e.g. the lab has no email address); the message is for a person."""


@dataclass(frozen=True)
class Lookup:
    link: AckLink | None
    problem: str  # "", "unknown", "expired", "revoked"


def link_url(token: str) -> str:
    return tokens.public_url(f"/lab/{token}")


def patient_ref(patient) -> str:
    """M5: the lab gets the patient's initials, with the case number as the reference. It does
    not need the full name, the birth date, the chart number or any contact details."""
    initials = [n.strip()[0].upper() for n in (patient.first_name, patient.last_name) if n and n.strip()]
    return ". ".join(initials) + "." if initials else "—"


def actor_for(link: AckLink) -> Actor:
    """The lab, acting through this link. The source names the link id, never the token."""
    return Actor.lab(link.lab, source=f"lab-link:{link.id}")


# ---- issuing and revoking ---------------------------------------------------------------------

def issue_link(case: LabCase, lab: Lab, *, dispatch_id: str | None, actor: Actor | None = None,
               now: dt.datetime | None = None) -> tuple[AckLink, str]:
    """Revoke the case's older links and create a new one. Returns (link, token); the token is
    never stored and must go straight into the email."""
    now = now or utcnow()
    revoke_links(case, "superseded", actor=actor, now=now)
    token, token_hash = tokens.new_token()
    ttl = int(current_app.config.get("LAB_LINK_TTL_DAYS", 30))
    link = AckLink(token_hash=token_hash, dispatch_id=dispatch_id, case_id=case.id, lab_id=lab.id,
                   practice_id=case.practice_id, created_at=now, expires_at=now + dt.timedelta(days=ttl))
    db.session.add(link)
    db.session.flush()
    record("case.lab_link_sent", "lab_case", case.id,
           after={"link_id": link.id, "lab_id": lab.id, "dispatch_id": dispatch_id,
                  "expires_at": link.expires_at.isoformat(timespec="seconds")},
           actor=actor, practice_id=case.practice_id)
    return link, token


def revoke_links(case: LabCase, reason: str, *, actor: Actor | None = None,
                 now: dt.datetime | None = None) -> list[int]:
    """Revoke every live link of the case; audited once with the link ids."""
    now = now or utcnow()
    links = db.session.scalars(
        select(AckLink).where(AckLink.case_id == case.id, AckLink.revoked_at.is_(None))
        .order_by(AckLink.id)).all()
    if not links:
        return []
    for link in links:
        link.revoked_at, link.revoked_reason = now, reason[:40]
    ids = [link.id for link in links]
    db.session.flush()
    record("case.lab_link_revoked", "lab_case", case.id, after={"link_ids": ids, "reason": reason},
           actor=actor, practice_id=case.practice_id)
    return ids


def prepare_email_dispatch(dispatch, actor: Actor | None = None) -> AckLink:
    """Called by "Approve and send" for an EMAIL lab, inside its transaction."""
    case = db.session.get(LabCase, dispatch.case_id)
    lab = db.session.get(Lab, dispatch.lab_id)
    _check_mailable(lab)
    link, token = issue_link(case, lab, dispatch_id=dispatch.id, actor=actor)
    _queue_work_order(case, lab, link, token, kind="work_order")
    return link


def resend_link(case: LabCase, actor: Actor) -> AckLink:
    """A new link (the old ones stop working) and the work order again, for the same dispatch."""
    lab = case.lab
    _check_mailable(lab)
    if case.sent_at is None or case.status in lifecycle.TERMINAL:
        raise LinkError(f"{case.number} is not with the lab, so there is no link to resend.")
    latest = db.session.scalar(select(AckLink).where(AckLink.case_id == case.id, AckLink.lab_id == lab.id)
                               .order_by(AckLink.id.desc()).limit(1))
    link, token = issue_link(case, lab, dispatch_id=latest.dispatch_id if latest else None, actor=actor)
    _queue_work_order(case, lab, link, token, kind="new_link")
    return link


def on_case_cancelled(case: LabCase, actor: Actor | None = None) -> None:
    """The practice cancelled: the lab's links stop working. (The lab is told through its channel
    by portal.labcomm.services.tell_lab.)"""
    revoke_links(case, "cancelled", actor=actor)


def _check_mailable(lab: Lab | None) -> None:
    if lab is None or lab.channel is not Channel.EMAIL:
        raise LinkError("Private links are for labs that work by email.")
    if not lab.email:
        raise LinkError(f"{lab.name} has no email address; add one in the lab directory first.")


# ---- resolving and acting -----------------------------------------------------------------------

def resolve(token: str, now: dt.datetime | None = None) -> Lookup:
    link = tokens.find(AckLink, token)
    if link is None:
        return Lookup(None, "unknown")
    return Lookup(link, link.problem(now or utcnow()))


def lab_actions(case: LabCase) -> dict[Status, lifecycle.Rule]:
    """What the lab may do now (the lifecycle's lab side)."""
    return lifecycle.allowed_moves(case, side=lifecycle.LAB)


def lab_move(link: AckLink, to: Status, *, reason: str = "", detail: dict | None = None) -> lifecycle.Rule:
    """Raises lifecycle.IllegalMove (and changes nothing) when the move is not allowed now."""
    rule = lifecycle.move(link.case, to, actor=actor_for(link), reason=reason, detail=detail)
    link.last_action_at = utcnow()
    return rule


def lab_message(link: AckLink, text: str):
    message = record_lab_message(link.case, link.lab, text, actor_for(link), direction="in")
    link.last_action_at = utcnow()
    return message


# ---- email ---------------------------------------------------------------------------------------

def _context(case: LabCase, lab: Lab) -> dict:
    practice = db.session.get(Practice, case.practice_id)
    return {
        "case": case, "lab": lab, "practice": practice, "patient_ref": patient_ref(case.patient),
        "numbering": practice.tooth_numbering, "status_label": case.status.label,
    }


def _queue_work_order(case: LabCase, lab: Lab, link: AckLink, token: str, kind: str) -> MailMessage:
    context = _context(case, lab) | {"url": link_url(token), "link": link, "kind": kind}
    prefix = "New link for" if kind == "new_link" else "Work order"
    subject = f"{prefix} {case.number} · {context['practice'].name}"
    if case.due_date:
        subject += f" · due {case.due_date:%a %d %b}"
    return queue_mail(
        to=lab.email, cc=lab.cc_emails, subject=subject, kind=kind, case_id=case.id,
        practice_id=case.practice_id, lab_id=lab.id, secret=token,
        text=render_template("mail/work_order.txt", **context),
        html=render_template("mail/work_order.html", **context),
    )


UPDATE_SUBJECTS = {
    "due_date": "Due date changed",
    "cancelled": "Cancelled",
    "message": "Message from the practice",
    "prescription": "Prescription changed",
}


def notify_lab(case: LabCase, kind: str, detail: dict | None = None) -> MailMessage | None:
    """Email an EMAIL lab about a change on a case it has been sent; other labs hear through
    their API (portal.dispatch.notices) or the coordinator's phone call, so this does nothing for them."""
    if kind not in UPDATE_SUBJECTS:
        raise ValueError(f"unknown lab notification {kind!r}")
    lab = case.lab
    if lab is None or lab.channel is not Channel.EMAIL or not lab.email or case.sent_at is None:
        return None
    context = _context(case, lab) | {"kind": kind, "detail": detail or {}}
    return queue_mail(
        to=lab.email, cc=lab.cc_emails, kind=kind, case_id=case.id, practice_id=case.practice_id,
        lab_id=lab.id, subject=f"{UPDATE_SUBJECTS[kind]}: {case.number} · {context['practice'].name}",
        text=render_template("mail/update.txt", **context),
        html=render_template("mail/update.html", **context),
    )
