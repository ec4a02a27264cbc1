"""Messages between a practice and a lab about a case: from the lab's link page, a lab API's
`message` event, or the case page. Services flush; the caller commits."""
from __future__ import annotations

from sqlalchemy import func, select, update

from portal import events
from portal.audit.actor import Actor
from portal.audit.record import record
from portal.clock import utcnow
from portal.extensions import db
from portal.messages.events import MessageToLab
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
    """The practice writes to the lab from the case page. How the lab hears of it (mail, its API,
    a phone call) is lab communication's to decide: it subscribes to MessageToLab."""
    message = record_lab_message(case, case.lab, text, actor, direction=OUT)
    events.publish(MessageToLab(case, message, actor))
    return message


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
    so it is audited (docs/reliability.md A1) — once per time something actually became read."""
    result = db.session.execute(
        update(LabMessage).where(LabMessage.case_id == case.id, LabMessage.direction == IN,
                                 LabMessage.read_at.is_(None)).values(read_at=utcnow())
    )
    changed = result.rowcount or 0
    if changed:
        record("lab_message.read", "lab_case", case.id, after={"messages": changed}, practice_id=case.practice_id)
    return changed
