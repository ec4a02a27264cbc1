"""How a lab hears from the practice. The one place that decides by the lab's channel:

- an EMAIL lab gets mail: the work order with its private link (portal.ack), and a mail for each
  later change (``ack.notify_lab``);
- an API lab gets the signed work order (portal.dispatch.services) and an order event for each
  later change (portal.dispatch.notices), one after another behind the work order;
- a MANUAL lab is phoned by the coordinator: its work order counts as delivered when approved and
  later changes send nothing (the note stays on the case page).

The case, message and dispatch services publish what happened (portal/events.py) and do not
know any of this; :func:`register` subscribes the handlers below when the app is created. They
run in the publisher's transaction, so the mail, the link and the order event commit with the
change. Services flush; the caller commits.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from flask import Flask
from sqlalchemy import select

from portal import events
from portal.ack import queries as ack_queries
from portal.ack import services as ack
from portal.ack.models import AckLink
from portal.audit.actor import Actor
from portal.audit.record import record
from portal.cases.events import CaseCancelled, CaseEdited
from portal.cases.lifecycle import IllegalMove
from portal.cases.models import LabCase
from portal.dispatch import notices
from portal.dispatch import queries as dispatch_queries
from portal.dispatch import services as dispatch
from portal.dispatch.events import WorkOrderApproved, WorkOrderDelivered, WorkOrderSuperseded
from portal.dispatch.models import Dispatch, DispatchState, NoticeType
from portal.extensions import db
from portal.labs.models import Channel
from portal.mail.models import FAILED, SENT, MailMessage
from portal.messages import services as messages
from portal.messages.events import MessageToLab
from portal.messages.models import LabMessage

# Email labs get these as mail (ack.notify_lab's kinds); every kind of order event has one.
EMAIL_KINDS = {NoticeType.CANCELLED: "cancelled", NoticeType.DUE_DATE_CHANGED: "due_date",
               NoticeType.MESSAGE: "message", NoticeType.PRESCRIPTION_CHANGED: "prescription"}


def register(app: Flask) -> None:
    """Subscribe lab communication to the events it follows (called by create_app)."""
    events.subscribe(app, WorkOrderApproved, on_work_order_approved)
    events.subscribe(app, WorkOrderSuperseded, on_work_order_superseded)
    events.subscribe(app, WorkOrderDelivered, on_work_order_delivered)
    events.subscribe(app, CaseCancelled, on_case_cancelled)
    events.subscribe(app, CaseEdited, on_case_edited)
    events.subscribe(app, MessageToLab, on_message_to_lab)


# --- the work order ------------------------------------------------------------------------------

def on_work_order_approved(event: WorkOrderApproved) -> None:
    """The work order goes to the lab by its channel, after the commit for an API lab."""
    order = event.dispatch
    if order.channel is Channel.MANUAL:
        # The coordinator phones the lab; what the lab says is then recorded with the status buttons.
        order.state, order.delivered_at = DispatchState.DELIVERED, order.created_at
    elif order.channel is Channel.API:
        dispatch.enqueue_drain(order.lab_id)
    elif order.channel is Channel.EMAIL:
        ack.prepare_email_dispatch(order)


def on_work_order_superseded(event: WorkOrderSuperseded) -> None:
    """A replaced API order's updates not yet delivered never go: the new work order carries the
    case as it is."""
    if event.dispatch.channel is Channel.API:
        notices.supersede_for(event.dispatch.id, event.actor)


def on_work_order_delivered(event: WorkOrderDelivered) -> None:
    """Changes made while the work order was on its way follow it now."""
    notices.release_next(event.dispatch_id)


def retry(order: Dispatch, actor: Actor) -> None:
    """A person asks for another go at a failed dispatch: the same order id and idempotency key
    through the API; for an email lab a new link and the work order mailed again."""
    if order.state is not DispatchState.FAILED:
        raise IllegalMove(f"This dispatch is {order.state.label.lower()}; only a failed one can be retried.")
    if order.channel is not Channel.EMAIL:
        dispatch.retry(order, actor)
        return
    case = db.session.get(LabCase, order.case_id)
    try:
        ack.resend_link(case, actor)
    except ack.LinkError as exc:
        raise IllegalMove(str(exc)) from None
    before = {"state": order.state.value}
    order.state, order.last_error, case.dispatch_error = DispatchState.PENDING, "", ""
    record("dispatch.retry", "dispatch", order.id, before=before,
           after={"state": order.state.value, "case": case.number, "via": "new link"}, actor=actor,
           practice_id=order.practice_id)


# --- changes after the work order ----------------------------------------------------------------

def tell_lab(case: LabCase, kind: NoticeType, data: dict, actor: Actor, message: LabMessage | None = None) -> None:
    """Tell the case's lab about a change, through its channel. `data` is the order event's
    `data` (docs/lab-api.md, "Order events"); `message` is the LabMessage of a `message`, linked
    to the mail or the order event that carries it."""
    lab = case.lab
    if lab is None or lab.channel is Channel.MANUAL:
        return
    if lab.channel is Channel.EMAIL:
        _email(case, kind, data, message)
    else:
        notices.queue_notice(case, kind, data, actor, message=message)


def _email(case: LabCase, kind: NoticeType, data: dict, message: LabMessage | None) -> None:
    if kind not in EMAIL_KINDS:
        return
    detail = data
    if kind is NoticeType.DUE_DATE_CHANGED:
        detail = {"before": _date(data.get("previous")), "after": _date(data.get("due_date"))}
    mail = ack.notify_lab(case, EMAIL_KINDS[kind], detail)
    if mail is not None and message is not None:
        message.mail_id = mail.id


def _date(value: str | None) -> dt.date | None:
    return dt.date.fromisoformat(value) if value else None


def on_case_cancelled(event: CaseCancelled) -> None:
    """The lab's links stop working, and the lab stops work: by email or through its API."""
    ack.on_case_cancelled(event.case, event.actor)
    tell_lab(event.case, NoticeType.CANCELLED, {"reason": event.case.status_reason}, event.actor)


def on_case_edited(event: CaseEdited) -> None:
    """A lab that has the case hears of a new due date and of a changed prescription."""
    case = event.case
    if "due_date" in event.changed:
        previous = event.previous_due_date
        tell_lab(case, NoticeType.DUE_DATE_CHANGED, {
            "due_date": case.due_date.isoformat() if case.due_date else None,
            "previous": previous.isoformat() if previous else None}, event.actor)
    if event.changed & {"items", "instructions"}:
        tell_lab(case, NoticeType.PRESCRIPTION_CHANGED, notices.prescription_data(case), event.actor)


def on_message_to_lab(event: MessageToLab) -> None:
    """An email lab gets the message by mail, an API lab as an order event (once it has the case),
    a manual lab by the coordinator's phone call."""
    message = event.message
    tell_lab(event.case, NoticeType.MESSAGE, {"text": message.text, "author": message.author}, event.actor,
             message=message)


# --- the case page's messages panel: the thread, and how each message reaches the lab -------------

@dataclass(frozen=True)
class MessagesPanel:
    thread: list[LabMessage]
    deliveries: dict[int, MessageDelivery]
    order: Dispatch | None  # an API lab's live order, which carries messages once delivered
    link: AckLink | None  # an email lab's newest private link, once the case is sent

    @property
    def unread(self) -> list[LabMessage]:
        return [m for m in self.thread if m.incoming and m.read_at is None]


def messages_panel(case: LabCase) -> MessagesPanel:
    thread = messages.thread(case.id)
    channel = case.lab.channel if case.lab is not None else None
    return MessagesPanel(
        thread=thread, deliveries=deliveries(case, thread),
        order=dispatch_queries.api_order(case) if channel is Channel.API else None,
        link=ack_queries.latest_link(case.id) if channel is Channel.EMAIL and case.sent_at else None,
    )


@dataclass(frozen=True)
class MessageDelivery:
    """How one outgoing message reached the lab. `tone` is a badge class ("ok", "warn", "bad" or ""
    for plain text); `notice_id` is an API update a person may retry."""

    label: str
    tone: str = ""
    detail: str = ""
    notice_id: int | None = None


def deliveries(case: LabCase, messages: list[LabMessage]) -> dict[int, MessageDelivery]:
    """Whether each outgoing message reached the lab, and how: by the email that carried it, by
    the order event that carried it through the lab's API, or not at all (a manual lab: the
    coordinator phones; or written before the case went to the lab). Two queries at most."""
    outgoing = [m for m in messages if not m.incoming]
    if not outgoing or case.lab is None:
        return {}
    mail_ids = [m.mail_id for m in outgoing if m.mail_id]
    mails = {m.id: m for m in db.session.scalars(select(MailMessage).where(MailMessage.id.in_(mail_ids)))} \
        if mail_ids else {}
    by_message = notices.by_message(case.id)
    result = {}
    for m in outgoing:
        if m.mail_id in mails:
            result[m.id] = _by_mail(mails[m.mail_id])
        elif m.id in by_message:
            result[m.id] = _by_notice(by_message[m.id])
        elif case.lab.channel is Channel.MANUAL:
            result[m.id] = MessageDelivery("Not sent: tell the lab by phone")
        elif case.lab.channel is Channel.EMAIL:
            result[m.id] = MessageDelivery("Not emailed: written before the case was sent (on the lab's link page)")
        else:
            result[m.id] = MessageDelivery("Not sent: written before the case went to the lab")
    return result


def _by_mail(mail: MailMessage) -> MessageDelivery:
    if mail.state == SENT:
        return MessageDelivery("Emailed", "ok")
    if mail.state == FAILED:
        return MessageDelivery("Email failed", "bad", mail.last_error)
    return MessageDelivery("Being emailed", "warn")


def _by_notice(notice) -> MessageDelivery:
    if notice.state is DispatchState.DELIVERED:
        return MessageDelivery("Delivered to the lab's system", "ok")
    if notice.state is DispatchState.FAILED:
        return MessageDelivery("Not delivered", "bad", notice.last_error, notice.id)
    if notice.state is DispatchState.SUPERSEDED:
        return MessageDelivery("Not sent: the case was sent to the lab again since")
    return MessageDelivery(notice.state_label, "warn", notice.last_error)
