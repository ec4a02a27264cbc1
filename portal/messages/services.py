"""Messages between a practice and a lab about a case: from the lab's link page, a lab API's
`message` event, or the case page. Services flush; the caller commits."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update

from portal.audit.actor import Actor
from portal.audit.service import record
from portal.clock import utcnow
from portal.extensions import db
from portal.messages.models import IN, OUT, LabMessage

MAX_LENGTH = 4000


class MessageError(ValueError):
    pass


def record_lab_message(case, lab, text: str, actor: Actor, direction: str = IN) -> LabMessage:
    """Store one message on `case` and audit it in the same transaction."""
    text = (text or "").strip()
    if not text:
        raise MessageError("Write a message first.")
    if len(text) > MAX_LENGTH:
        raise MessageError(f"Keep a message under {MAX_LENGTH} characters.")
    if direction not in (IN, OUT):
        raise MessageError(f"unknown direction {direction!r}")
    message = LabMessage(
        practice_id=case.practice_id, case_id=case.id, lab_id=lab.id if lab is not None else case.lab_id,
        direction=direction, author=(actor.label or actor.kind)[:200], text=text,
    )
    db.session.add(message)
    db.session.flush()
    action = "case.lab_message" if direction == IN else "case.message_to_lab"
    # The text stays in the message row; the append-only audit row names it.
    record(action, "lab_case", case.id, after={"message_id": message.id, "direction": direction,
                                               "length": len(text)},
           actor=actor, practice_id=case.practice_id)
    return message


def send_to_lab(case, text: str, actor: Actor) -> LabMessage:
    """The practice writes to the lab from the case page: an email lab gets it by mail, an API lab
    as an order event (once it has the case), a manual lab by the coordinator's phone call."""
    from portal.dispatch.models import NoticeType
    from portal.dispatch.notices import tell_lab

    message = record_lab_message(case, case.lab, text, actor, direction=OUT)
    tell_lab(case, NoticeType.MESSAGE, {"text": message.text, "author": message.author}, actor, message=message)
    return message


@dataclass(frozen=True)
class Delivery:
    """How one outgoing message reached the lab, for the messages panel. `tone` is a badge class
    ("ok", "warn", "bad" or "" for plain text); `notice_id` is an API update a person may retry."""

    label: str
    tone: str = ""
    detail: str = ""
    notice_id: int | None = None


def deliveries(case, messages: list[LabMessage]) -> dict[int, Delivery]:
    """Whether each outgoing message reached the lab, and how: by the email that carried it, by
    the order event that carried it through the lab's API, or not at all (a manual lab: the
    coordinator phones; or written before the case went to the lab). Two queries at most."""
    from portal.dispatch.notices import by_message
    from portal.mail.models import MailMessage

    outgoing = [m for m in messages if not m.incoming]
    if not outgoing or case.lab is None:
        return {}
    mail_ids = [m.mail_id for m in outgoing if m.mail_id]
    mails = {m.id: m for m in db.session.scalars(select(MailMessage).where(MailMessage.id.in_(mail_ids)))} \
        if mail_ids else {}
    notices = by_message(case.id)
    result = {}
    for m in outgoing:
        if m.mail_id in mails:
            result[m.id] = _by_mail(mails[m.mail_id])
        elif m.id in notices:
            result[m.id] = _by_notice(notices[m.id])
        elif case.lab.channel.value == "manual":
            result[m.id] = Delivery("Not sent: tell the lab by phone")
        elif case.lab.channel.value == "email":
            result[m.id] = Delivery("Not emailed: written before the case was sent (on the lab's link page)")
        else:
            result[m.id] = Delivery("Not sent: written before the case went to the lab")
    return result


def _by_mail(mail) -> Delivery:
    from portal.mail.models import FAILED, SENT

    if mail.state == SENT:
        return Delivery("Emailed", "ok")
    if mail.state == FAILED:
        return Delivery("Email failed", "bad", mail.last_error)
    return Delivery("Being emailed", "warn")


def _by_notice(notice) -> Delivery:
    from portal.dispatch.models import DispatchState

    if notice.state is DispatchState.DELIVERED:
        return Delivery("Delivered to the lab's system", "ok")
    if notice.state is DispatchState.FAILED:
        return Delivery("Not delivered", "bad", notice.last_error, notice.id)
    if notice.state is DispatchState.SUPERSEDED:
        return Delivery("Not sent: the case was sent to the lab again since")
    return Delivery(notice.state_label, "warn", notice.last_error)


def thread(case_id: int) -> list[LabMessage]:
    return list(db.session.scalars(
        select(LabMessage).where(LabMessage.case_id == case_id).order_by(LabMessage.created_at, LabMessage.id)
    ))


def unread_count(practice_id: int) -> int:
    return db.session.scalar(
        select(func.count(LabMessage.id)).where(
            LabMessage.practice_id == practice_id, LabMessage.direction == IN, LabMessage.read_at.is_(None))
    ) or 0


def unread_by_case(practice_id: int, case_ids: list[int]) -> dict[int, int]:
    """Unread incoming messages per case, for many cases in one query."""
    if not case_ids:
        return {}
    rows = db.session.execute(
        select(LabMessage.case_id, func.count(LabMessage.id)).where(
            LabMessage.practice_id == practice_id, LabMessage.case_id.in_(case_ids),
            LabMessage.direction == IN, LabMessage.read_at.is_(None),
        ).group_by(LabMessage.case_id)
    ).all()
    return dict(rows)


def mark_read(case) -> int:
    """Mark the case's incoming messages read; returns how many changed. It changes stored state,
    so it is audited (A1) — once per time something actually became read."""
    result = db.session.execute(
        update(LabMessage).where(LabMessage.case_id == case.id, LabMessage.direction == IN,
                                 LabMessage.read_at.is_(None)).values(read_at=utcnow())
    )
    changed = result.rowcount or 0
    if changed:
        record("lab_message.read", "lab_case", case.id, after={"messages": changed}, practice_id=case.practice_id)
    return changed
