"""Telling a lab about changes to a case it has been sent (docs/lab-api.md, "order events").

The practice cancels a case, moves its due date, edits its prescription or writes to the lab.
portal.labcomm decides how the lab hears of it; for an API lab it calls `queue_notice` here.

An order event is an outbox row, an OrderNotice, delivered like a work order (docs/reliability.md D1-D3)
with the dispatch machinery: it commits with the change, a job is relayed to RQ after the commit
(deterministic job id), the job claims the row with a lease, posts the signed event and records the
outcome; 5xx, 408, 409, 429 and network errors are retried with capped backoff and jitter, any
other 4xx (404/410: the lab does not know the order or has closed it) fails for good, shows on the
case and the board, and a person may retry it. The sweep hands over notices whose job was lost.

Order. The notices of one order are delivered one after another, in the order they were made
(their `id`): a notice may only be claimed while

- its order (the dispatch) is delivered: the lab cannot act on an event for an order it does not
  know, so a change made while the work order is still on its way waits for it. The work order
  is sent as the coordinator approved it (its payload is fixed at approval), so the change must
  follow it rather than be dropped. If the order never arrives (it fails, or the case is sent
  again after a rescan and the order is superseded), its notices never go: a new order carries
  the case as it is then.
- no earlier notice of the same order is pending or sending. A notice that failed for good does
  not hold back the ones after it; its Retry sends it later with its original `occurred_at`.

When a work order or a notice is done (delivered, or failed for good), the next waiting notice of
that order is handed to RQ; the sweep picks up any the chain missed. One exception keeps a
cancelled case from ever being sent: cancelling before the work order's first attempt withdraws
the work order instead of queueing a `cancelled` event behind it.

Services flush; the caller (request or job) commits.
"""
from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import bindparam, exists, select, update

from portal import retries
from portal.audit.actor import Actor
from portal.audit.record import record
from portal.cases.lifecycle import IllegalMove
from portal.cases.models import LabCase
from portal.clock import utcnow
from portal.dispatch import services
from portal.dispatch.models import Dispatch, DispatchState, NoticeType, OrderNotice, new_id
from portal.extensions import db
from portal.labs.models import Channel
from portal.queue import DELIVER_NOTICE, enqueue_after_commit, enqueue_now, get_queue

SCHEMA = "labmanager.order_event/1"
ENTITY = "order_notice"


# --- an order event for a change on the case -------------------------------------------------------

def prescription_data(case: LabCase) -> dict:
    """A prescription_changed event's data: the items in the work order's shape, and the instructions."""
    return {"items": [{"teeth": item.tooth_list, "restoration": item.restoration, "material": item.material,
                       "shade": item.shade, "margin": item.margin, "notes": item.notes} for item in case.items],
            "instructions": case.instructions}


def current_order(case: LabCase) -> Dispatch | None:
    """The case's live order at an API lab: its newest dispatch through the API not superseded."""
    return db.session.scalar(
        select(Dispatch).where(Dispatch.case_id == case.id, Dispatch.channel == Channel.API,
                               Dispatch.state != DispatchState.SUPERSEDED)
        .order_by(Dispatch.created_at.desc()).limit(1))


def queue_notice(case: LabCase, kind: NoticeType, data: dict, actor: Actor, message=None) -> OrderNotice | None:
    """Write the notice of a change in the caller's transaction and relay its job after the commit.

    None when the case has no order at the lab (never sent), and for a cancellation that withdrew
    a work order not yet attempted."""
    order = current_order(case)
    if order is None:
        return None
    if kind is NoticeType.CANCELLED and _withdraw_unsent(order, actor):
        return None
    now = utcnow()
    notice = OrderNotice(
        event_id=new_id(), dispatch_id=order.id, case_id=case.id, lab_id=order.lab_id,
        practice_id=case.practice_id, type=kind, message_id=message.id if message is not None else None,
        state=DispatchState.PENDING, attempts=0, max_attempts=retries.attempts(),
        next_attempt_at=now, created_at=now,
    )
    notice.payload = json.dumps(order_event(notice, case, data, now), separators=(",", ":"), sort_keys=True)
    db.session.add(notice)
    db.session.flush()
    record(f"{ENTITY}.queued", ENTITY, notice.id, after={
        "type": kind.value, "case_id": case.id, "order_id": order.id, "event_id": notice.event_id,
        "waits_for_order": "yes" if order.state is not DispatchState.DELIVERED else "no"},
        actor=actor, practice_id=case.practice_id)
    # Relayed even while it must wait: the job's claim decides, so a work order delivered
    # meanwhile is followed at once (the chain and the sweep cover the rest).
    enqueue_attempt(notice)
    return notice


def order_event(notice: OrderNotice, case: LabCase, data: dict, occurred_at: dt.datetime) -> dict:
    """The JSON body of docs/lab-api.md's order event."""
    return {
        "schema": SCHEMA, "event_id": notice.event_id, "order_id": notice.dispatch_id,
        "case_number": case.number, "type": notice.type.value,
        "occurred_at": occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ"), "data": data,
    }


def _withdraw_unsent(order: Dispatch, actor: Actor) -> bool:
    """Cancelling before the work order's first attempt: withdraw it, so the lab never gets it.
    The guarded UPDATE loses to a job that claimed it first; then the lab may have it, and the
    cancellation is queued behind it."""
    withdrawn = db.session.execute(
        update(Dispatch).where(Dispatch.id == order.id, Dispatch.state == DispatchState.PENDING,
                               Dispatch.attempts == 0)
        .values(state=DispatchState.SUPERSEDED, next_attempt_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount == 1
    if withdrawn:
        db.session.expire(order)
        record("dispatch.superseded", "dispatch", order.id, before={"state": "pending"},
               after={"state": "superseded", "why": "the case was cancelled before it was sent"},
               actor=actor, practice_id=order.practice_id)
        supersede_for(order.id, actor)
    return withdrawn


def supersede_for(dispatch_id: str, actor: Actor | None) -> None:
    """The order was replaced or withdrawn: its notices not yet delivered will never go (an
    attempt in flight finds its row superseded and records nothing, as a dispatch's does)."""
    for notice in db.session.scalars(select(OrderNotice).where(
            OrderNotice.dispatch_id == dispatch_id,
            OrderNotice.state.in_((DispatchState.PENDING, DispatchState.SENDING, DispatchState.FAILED)))):
        before = notice.state.value
        notice.state, notice.next_attempt_at = DispatchState.SUPERSEDED, None
        record(f"{ENTITY}.superseded", ENTITY, notice.id, before={"state": before},
               after={"state": "superseded", "order_id": dispatch_id}, actor=actor,
               practice_id=notice.practice_id)


# --- relaying, the chain and the sweep ---------------------------------------------------------------

def enqueue_attempt(notice: OrderNotice) -> None:
    enqueue_after_commit(DELIVER_NOTICE, notice.id, job_id=notice.job_id)


# Built once: every delivered work order runs it.
_NEXT_WAITING = (
    select(OrderNotice).where(OrderNotice.dispatch_id == bindparam("dispatch_id"),
                              OrderNotice.state == DispatchState.PENDING)
    .order_by(OrderNotice.id).limit(1)
)


def release_next(dispatch_id: str) -> None:
    """The order's work order or one of its notices is done: hand RQ the next notice waiting."""
    notice = db.session.scalar(_NEXT_WAITING, {"dispatch_id": dispatch_id})
    if notice is not None:
        enqueue_attempt(notice)


# A table alias, not aliased(): that would configure every mapper at import time.
_earlier = OrderNotice.__table__.alias("earlier")
# A notice may go when its order has reached the lab and nothing before it is still on its way.
_ITS_TURN = (
    exists().where(Dispatch.id == OrderNotice.dispatch_id, Dispatch.state == DispatchState.DELIVERED)
    & ~exists().where(_earlier.c.dispatch_id == OrderNotice.dispatch_id, _earlier.c.id < OrderNotice.id,
                      _earlier.c.state.in_((DispatchState.PENDING, DispatchState.SENDING)))
)
_CLAIMABLE = (
    (OrderNotice.state == DispatchState.PENDING)
    | ((OrderNotice.state == DispatchState.SENDING) & (OrderNotice.next_attempt_at <= bindparam("now")))
)
_CLAIM = (
    update(OrderNotice)
    .where(OrderNotice.id == bindparam("notice_id"), _CLAIMABLE, _ITS_TURN)
    .values(state=DispatchState.SENDING, attempts=OrderNotice.attempts + 1,
            next_attempt_at=bindparam("lease_until", type_=OrderNotice.next_attempt_at.type))
    .returning(OrderNotice)
)


def claim(notice_id: int, now: dt.datetime | None = None) -> OrderNotice | None:
    """Take the notice for one attempt, atomically, if it is its turn (see the module docstring):
    pending, or sending with a lapsed lease. None when there is nothing to do now."""
    now = now or utcnow()
    lease_until = now + dt.timedelta(seconds=services.lease_seconds())
    return db.session.scalars(
        _CLAIM, {"notice_id": notice_id, "now": now, "lease_until": lease_until},
        execution_options={"populate_existing": True, "synchronize_session": False},
    ).one_or_none()


def due_for_sweep(now: dt.datetime | None = None, limit: int = 500) -> list[OrderNotice]:
    """Notices whose attempt is due and whose turn it is: those the chain would hand over next."""
    now = now or utcnow()
    return list(db.session.scalars(
        select(OrderNotice).where(_CLAIMABLE, _ITS_TURN, OrderNotice.next_attempt_at <= now)
        .order_by(OrderNotice.next_attempt_at).limit(limit), {"now": now}))


def sweep(now: dt.datetime | None = None) -> int:
    """Re-enqueue every due notice that has no live RQ job; returns how many were handed over."""
    queue = get_queue()
    return sum(1 for notice in due_for_sweep(now)
               if enqueue_now(queue, DELIVER_NOTICE, notice.id, job_id=notice.job_id, due_at=notice.next_attempt_at))


# --- the delivery job's outcomes (portal/dispatch/delivery.py does the HTTP between them) ------------

def mark_delivered(notice: OrderNotice, status_code: int, actor: Actor) -> bool:
    notice_id, attempt, order_id = notice.id, notice.attempts, notice.dispatch_id
    kind, case_id, practice_id = notice.type.value, notice.case_id, notice.practice_id
    if not services.finish(notice, state=DispatchState.DELIVERED, delivered_at=utcnow(), last_error="",
                           last_status_code=status_code, next_attempt_at=None):
        return False
    record(f"{ENTITY}.delivered", ENTITY, notice_id, before={"state": "sending"},
           after={"state": "delivered", "attempt": attempt, "status_code": status_code, "type": kind,
                  "case_id": case_id}, actor=actor, practice_id=practice_id)
    release_next(order_id)
    return True


def mark_transient(notice: OrderNotice, error: str, status_code: int | None, actor: Actor,
                   retry_after: float | None = None) -> float | None:
    """Schedule the next attempt (returns the delay), or fail the notice if attempts are used up.
    Later notices of the order wait meanwhile."""
    notice_id, attempt, practice_id = notice.id, notice.attempts, notice.practice_id
    delay = services.retry_delay(notice, retry_after)
    if delay is None:
        mark_permanent(notice, f"{error} (gave up after {attempt} attempts)", status_code, actor)
        return None
    if not services.finish(notice, state=DispatchState.PENDING, last_error=error[:500], last_status_code=status_code,
                           next_attempt_at=utcnow() + dt.timedelta(seconds=delay)):
        return None
    record(f"{ENTITY}.retry_scheduled", ENTITY, notice_id, before={"state": "sending"},
           after={"state": "pending", "attempt": attempt, "error": error[:500], "status_code": status_code,
                  "retry_in_seconds": round(delay, 3)}, actor=actor, practice_id=practice_id)
    return delay


def mark_permanent(notice: OrderNotice, error: str, status_code: int | None, actor: Actor) -> bool:
    """Failed for good: the case page and the board show it with a Retry; later notices may go."""
    notice_id, attempt, order_id = notice.id, notice.attempts, notice.dispatch_id
    kind, case_id, practice_id = notice.type.value, notice.case_id, notice.practice_id
    if not services.finish(notice, state=DispatchState.FAILED, last_error=error[:500], last_status_code=status_code,
                           next_attempt_at=None):
        return False
    record(f"{ENTITY}.failed", ENTITY, notice_id, before={"state": "sending"},
           after={"state": "failed", "attempt": attempt, "error": error[:500], "status_code": status_code,
                  "type": kind, "case_id": case_id}, actor=actor, practice_id=practice_id)
    release_next(order_id)
    return True


# --- a person's retry, and what the pages show ---------------------------------------------------------

def retry(notice: OrderNotice, actor: Actor) -> None:
    """Another go at a notice that failed for good: the same event id and webhook-id, so a lab
    that did get it after all drops the repeat."""
    if notice.state is not DispatchState.FAILED:
        raise IllegalMove(f"This update is {notice.state_label.lower()}; only one that was not delivered "
                          "can be retried.")
    before = {"state": notice.state.value, "attempts": notice.attempts}
    notice.state = DispatchState.PENDING
    notice.max_attempts = notice.attempts + retries.attempts()  # a new round of the schedule
    notice.next_attempt_at = utcnow()
    record(f"{ENTITY}.retry", ENTITY, notice.id, before=before,
           after={"state": notice.state.value, "type": notice.type.value, "case_id": notice.case_id},
           actor=actor, practice_id=notice.practice_id)
    enqueue_attempt(notice)


def failed_notices(case_id: int) -> list[OrderNotice]:
    return list(db.session.scalars(select(OrderNotice).where(
        OrderNotice.case_id == case_id, OrderNotice.state == DispatchState.FAILED).order_by(OrderNotice.id)))


def notices_of(dispatch_id: str) -> list[OrderNotice]:
    """An order's notices, oldest first, for the case page."""
    return list(db.session.scalars(
        select(OrderNotice).where(OrderNotice.dispatch_id == dispatch_id).order_by(OrderNotice.id)))


def by_message(case_id: int) -> dict[int, OrderNotice]:
    """The notice that carries each of the case's outgoing messages to an API lab."""
    rows = db.session.scalars(select(OrderNotice).where(
        OrderNotice.case_id == case_id, OrderNotice.message_id.is_not(None)))
    return {n.message_id: n for n in rows}
