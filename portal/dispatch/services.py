"""Approve and send, retry, and the outbox sweep. Services flush; the view or job commits."""
from __future__ import annotations

import datetime as dt
import functools
import json

from flask import current_app
from sqlalchemy import bindparam, select, update

from portal import events, retries
from portal.audit.actor import Actor
from portal.audit.record import record
from portal.cases import lifecycle
from portal.cases.lifecycle import IllegalMove
from portal.cases.models import LabCase
from portal.cases.status import Status
from portal.clock import utcnow
from portal.dispatch.events import WorkOrderApproved, WorkOrderDelivered, WorkOrderSuperseded
from portal.dispatch.models import Dispatch, DispatchState, OrderNotice, new_id
from portal.dispatch.validation import Check, check_case
from portal.extensions import db
from portal.labs.models import Channel, Lab, LabSecret
from portal.practices.models import Practice
from portal.queue import DELIVER_DUE, DELIVER_WORK_ORDER, enqueue_after_commit, enqueue_now, enqueue_once_after_commit, get_queue, lab_api_job_timeout
from portal.scans.queries import work_order_scans

SENDABLE = frozenset({Status.DRAFT, Status.RESCAN})
LIVE = frozenset({DispatchState.PENDING, DispatchState.SENDING, DispatchState.FAILED, DispatchState.DELIVERED})
SCHEMA = "labmanager.work_order/1"


class NotSendable(IllegalMove):
    """The prescription has problems (or a warning nobody confirmed); `check` lists them."""

    def __init__(self, case: LabCase, check: Check, unconfirmed: bool = False):
        self.check = check
        if check.problems:
            text = f"{case.number} can't be sent yet: " + " ".join(p.message for p in check.problems)
        else:
            text = f"{case.number} needs a confirmation before it is sent: {' '.join(check.warnings)} " \
                   "Open the case and use Approve and send to confirm."
        super().__init__(text)


def http_timeout() -> float:
    return float(current_app.config["LAB_API_TIMEOUT"])


def job_timeout() -> int:
    """Longer than one attempt's HTTP timeouts added up (connect, write, read, pool)."""
    return lab_api_job_timeout(current_app.config)


def lease_seconds() -> int:
    """How long an attempt holds the row; after that the sweep may start another attempt."""
    return job_timeout() + 1


def batch_seconds() -> float:
    """How long a lab's drain job keeps starting new attempts before it hands the rest to a new job."""
    return float(current_app.config["DISPATCH_BATCH_SECONDS"])


def batch_size() -> int:
    """How many dispatches a lab's drain job reads at most; it hands the rest to a new job."""
    return int(current_app.config["DISPATCH_BATCH_SIZE"])


def drain_key(lab_id: int) -> str:
    """The key the sends of one lab share one waiting drain job (DELIVER_DUE) by."""
    return f"dispatch-lab-{lab_id}"


def latest_dispatch(case_id: int) -> Dispatch | None:
    return db.session.scalar(
        select(Dispatch).where(Dispatch.case_id == case_id).order_by(Dispatch.created_at.desc()).limit(1))


def work_order(case: LabCase, dispatch_id: str) -> dict:
    """The JSON body of docs/lab-api.md, as the coordinator approved it."""
    practice = db.session.get(Practice, case.practice_id)
    patient, provider = case.patient, case.provider
    base = current_app.config["PUBLIC_BASE_URL"].rstrip("/")
    return {
        "schema": SCHEMA,
        "order_id": dispatch_id,
        "case_number": case.number,
        "practice": {"id": str(practice.id), "name": practice.name, "phone": practice.phone},
        "patient": {
            "reference": patient.chart_number, "first_name": patient.first_name,
            "last_name": patient.last_name,
            "date_of_birth": patient.date_of_birth.isoformat() if patient.date_of_birth else None,
            "sex": patient.sex or None,
        },
        "provider": {"name": provider.name, "license_number": provider.license_number},
        "items": [
            {"teeth": item.tooth_list, "restoration": item.restoration, "material": item.material,
             "shade": item.shade, "margin": item.margin, "notes": item.notes}
            for item in case.items
        ],
        "due_date": case.due_date.isoformat(),
        "seat_date": case.seat_date.isoformat() if case.seat_date else None,
        "instructions": case.instructions,
        "scans": work_order_scans(case.id),
        "callback_url": f"{base}/api/labs/{case.lab_id}/events",
    }


def _supersede_earlier(case: LabCase, actor: Actor) -> None:
    for old in db.session.scalars(select(Dispatch).where(
            Dispatch.case_id == case.id, Dispatch.state.in_(LIVE))):
        before = old.state.value
        old.state = DispatchState.SUPERSEDED
        record("dispatch.superseded", "dispatch", old.id, before={"state": before},
               after={"state": old.state.value}, actor=actor, practice_id=case.practice_id)
        events.publish(WorkOrderSuperseded(old, actor))


def approve_and_send(case: LabCase, actor: Actor, confirm_risk: bool) -> Dispatch:
    """A person approves the prescription: check it, write the dispatch, move the case to Sent.

    All in the caller's transaction; the API delivery job is relayed to RQ after the commit.
    Raises IllegalMove (NotSendable for prescription problems) and changes nothing.
    """
    if case.status not in SENDABLE:
        raise IllegalMove(f"{case.number} is {case.status.label}; only a draft or a case returned for "
                          "rescan can be sent.")
    check = check_case(case)
    if not check.ok or (check.warnings and not confirm_risk):
        raise NotSendable(case, check)
    lab = case.lab
    _supersede_earlier(case, actor)
    dispatch_id = new_id()
    now = utcnow()
    dispatch = Dispatch(
        id=dispatch_id, case_id=case.id, lab_id=lab.id, practice_id=case.practice_id, channel=lab.channel,
        state=DispatchState.PENDING, attempts=0, max_attempts=retries.attempts(),
        next_attempt_at=now, webhook_id="msg_" + dispatch_id.replace("-", ""),
        approved_by_id=int(actor.id) if actor.kind == "user" and actor.id else None,
        payload=json.dumps(work_order(case, dispatch_id), separators=(",", ":"), sort_keys=True),
        created_at=now,
    )
    db.session.add(dispatch)
    case.dispatch_error = ""
    detail = {"dispatch_id": dispatch_id, "channel": lab.channel.value}
    if check.warnings:
        detail["risk_confirmed"] = "yes"
    lifecycle.move(case, Status.SENT, actor=actor, detail=detail, now=now)
    db.session.flush()
    # How the work order travels (mail with a private link, the lab's API, a phone call) is
    # lab communication's to decide: portal.labcomm subscribes.
    events.publish(WorkOrderApproved(dispatch, actor))
    return dispatch


def email_outcome(case_id: int, sent: bool, error: str, actor: Actor) -> None:
    """The work-order email of an email lab's dispatch was sent, or failed for good: the dispatch
    (and, on failure, the board's card) say so, as they do for an API lab (docs/reliability.md D4)."""
    dispatch = db.session.scalar(
        select(Dispatch).where(Dispatch.case_id == case_id, Dispatch.channel == Channel.EMAIL,
                               Dispatch.state != DispatchState.SUPERSEDED)
        .order_by(Dispatch.created_at.desc()).limit(1))
    if dispatch is None:
        return
    case = db.session.get(LabCase, case_id)
    before = dispatch.state.value
    if sent:
        if dispatch.state is DispatchState.DELIVERED:
            return
        dispatch.state, dispatch.delivered_at, dispatch.last_error = DispatchState.DELIVERED, utcnow(), ""
        case.dispatch_error = ""
    else:
        dispatch.state, dispatch.last_error = DispatchState.FAILED, f"The email to the lab failed: {error}"[:500]
        case.dispatch_error = dispatch.last_error
    record(f"dispatch.{dispatch.state.value}", "dispatch", dispatch.id, before={"state": before},
           after={"state": dispatch.state.value, "via": "email", "case_id": case_id,
                  **({"error": error[:200]} if not sent else {})},
           actor=actor, practice_id=dispatch.practice_id)


def enqueue_attempt(dispatch: Dispatch) -> None:
    """Hand the next attempt of this dispatch to RQ after the commit (the outbox relay)."""
    enqueue_after_commit(DELIVER_WORK_ORDER, dispatch.id, job_id=dispatch.job_id)


def enqueue_drain(lab_id: int) -> None:
    """After the commit, make sure a drain job for the lab is waiting (the outbox relay of a new
    dispatch): the first send of a burst enqueues the lab's drain job, the others find it
    waiting, and that one job makes the first attempt of each (portal/queue.py, SET NX)."""
    enqueue_once_after_commit(drain_key(lab_id), DELIVER_DUE, lab_id)


def retry(dispatch: Dispatch, actor: Actor) -> None:
    """Another go at a failed dispatch to a lab API: same order id, same idempotency key. (A
    person's Retry goes through portal.labcomm.services.retry, which mails an email lab instead.)"""
    if dispatch.channel is not Channel.API:
        raise ValueError(f"dispatch {dispatch.id} is not to a lab API; portal.labcomm retries it")
    if dispatch.state is not DispatchState.FAILED:
        raise IllegalMove(f"This dispatch is {dispatch.state.label.lower()}; only a failed one can be retried.")
    case = db.session.get(LabCase, dispatch.case_id)
    before = {"state": dispatch.state.value, "attempts": dispatch.attempts}
    dispatch.state = DispatchState.PENDING
    dispatch.max_attempts = dispatch.attempts + retries.attempts()  # a new round of the schedule
    dispatch.next_attempt_at = utcnow()
    case.dispatch_error = ""
    record("dispatch.retry", "dispatch", dispatch.id, before=before,
           after={"state": dispatch.state.value, "case": case.number}, actor=actor,
           practice_id=dispatch.practice_id)
    enqueue_attempt(dispatch)


# --- the delivery job's steps (portal/dispatch/delivery.py does the HTTP between them) ------------

# The delivery job's claim and look-up, built once: building a statement per attempt cost about
# as much as running it on SQLite.
_CLAIM = (
    update(Dispatch)
    .where(Dispatch.id == bindparam("dispatch_id"), Dispatch.channel == Channel.API,
           (Dispatch.state == DispatchState.PENDING)
           | ((Dispatch.state == DispatchState.SENDING) & (Dispatch.next_attempt_at <= bindparam("now"))))
    .values(state=DispatchState.SENDING, attempts=Dispatch.attempts + 1,
            next_attempt_at=bindparam("lease_until", type_=Dispatch.next_attempt_at.type))
    .returning(Dispatch)
)
# A lab's drain job only makes first attempts: a dispatch that has been tried before belongs to its
# own scheduled retry (or a person's Retry, or the sweep), which keeps its backoff.
_CLAIM_FIRST = (
    update(Dispatch)
    .where(Dispatch.id == bindparam("dispatch_id"), Dispatch.channel == Channel.API,
           Dispatch.state == DispatchState.PENDING, Dispatch.attempts == 0)
    .values(state=DispatchState.SENDING, attempts=1,
            next_attempt_at=bindparam("lease_until", type_=Dispatch.next_attempt_at.type))
    .returning(Dispatch)
)
_FIRST_DUE = (
    select(Dispatch.id)
    .where(Dispatch.lab_id == bindparam("lab_id"), Dispatch.channel == Channel.API,
           Dispatch.state == DispatchState.PENDING, Dispatch.attempts == 0,
           Dispatch.next_attempt_at <= bindparam("now"))
    .order_by(Dispatch.next_attempt_at, Dispatch.id).limit(bindparam("limit"))
)
_LAB_TARGET = (
    select(Lab.name, Lab.api_url, LabSecret.secret)
    .outerjoin(LabSecret, (LabSecret.lab_id == Lab.id) & LabSecret.revoked_at.is_(None))
    .where(Lab.id == bindparam("lab_id")).order_by(LabSecret.id)
)


def claim(dispatch_id: str, now: dt.datetime | None = None) -> Dispatch | None:
    """Take the row for one attempt, atomically: only a pending row, or one whose previous attempt
    outlived its lease (its worker died). Returns None when there is nothing to do (state guard)."""
    now = now or utcnow()
    lease_until = now + dt.timedelta(seconds=lease_seconds())
    return db.session.scalars(
        _CLAIM, {"dispatch_id": dispatch_id, "now": now, "lease_until": lease_until},
        execution_options={"populate_existing": True, "synchronize_session": False},
    ).one_or_none()


def claim_first(dispatch_id: str, now: dt.datetime | None = None) -> Dispatch | None:
    """`claim`, for a lab's drain job: only a dispatch still waiting for its first attempt."""
    now = now or utcnow()
    lease_until = now + dt.timedelta(seconds=lease_seconds())
    return db.session.scalars(
        _CLAIM_FIRST, {"dispatch_id": dispatch_id, "lease_until": lease_until},
        execution_options={"populate_existing": True, "synchronize_session": False},
    ).one_or_none()


def first_attempts_due(lab_id: int, limit: int, now: dt.datetime | None = None) -> list[str]:
    """Ids of the lab's API dispatches waiting for their first attempt, oldest first."""
    return list(db.session.scalars(_FIRST_DUE, {"lab_id": lab_id, "now": now or utcnow(), "limit": limit}))


def lab_target(row: Dispatch | OrderNotice) -> tuple[str, str, list[str]]:
    """(lab name, API base URL, active signing secrets) of the row's lab, in one query."""
    return lab_target_of(row.lab_id)


def lab_target_of(lab_id: int) -> tuple[str, str, list[str]]:
    rows = db.session.execute(_LAB_TARGET, {"lab_id": lab_id}).all()
    return rows[0].name, rows[0].api_url, [r.secret for r in rows if r.secret]


def retry_delay(row: Dispatch | OrderNotice, retry_after: float | None = None) -> float | None:
    """Seconds until the next attempt of a row whose attempt just failed, on the retry schedule
    (portal/retries.py); None when its round of attempts is spent."""
    if row.attempts >= row.max_attempts:
        return None
    return retries.delay(retries.in_round(row.attempts, row.max_attempts), retry_after)


@functools.cache
def _finish_statement(model: type[Dispatch] | type[OrderNotice], names: tuple[str, ...]):
    """`finish`'s UPDATE for one outbox and one set of columns, built once (a handful in all)."""
    return (update(model).where(model.id == bindparam("row_id"), model.state == DispatchState.SENDING)
            .values({name: bindparam(f"new_{name}", type_=getattr(model, name).type) for name in names})
            .execution_options(synchronize_session=False))


def finish(row: Dispatch | OrderNotice, **values) -> bool:
    """Record an attempt's outcome only if the row is still ours: the case may have been sent again
    or cancelled while the request ran (then the row is superseded and stays as it is).
    Works for either outbox to a lab API (a dispatch or an order notice). Callers read what they
    need from `row` before this: it is expired afterwards, and touching it again would reload
    the row with one more SELECT."""
    params = {"row_id": row.id, **{f"new_{name}": value for name, value in values.items()}}
    done = db.session.execute(_finish_statement(type(row), tuple(sorted(values))), params).rowcount == 1
    if done:
        db.session.expire(row)  # the object reloads what was written when next read
    return done


def mark_delivered(dispatch: Dispatch, status_code: int, lab_reference: str, actor: Actor) -> bool:
    # The case's dispatch_error is already clear: approve_and_send and retry clear it.
    dispatch_id, attempt, case_id, practice_id = dispatch.id, dispatch.attempts, dispatch.case_id, dispatch.practice_id
    if not finish(dispatch, state=DispatchState.DELIVERED, delivered_at=utcnow(), last_status_code=status_code,
                  last_error="", lab_reference=lab_reference[:100], next_attempt_at=None):
        return False
    record("dispatch.delivered", "dispatch", dispatch_id, before={"state": "sending"},
           after={"state": "delivered", "attempt": attempt, "status_code": status_code,
                  "lab_reference": lab_reference[:100], "case_id": case_id},
           actor=actor, practice_id=practice_id)
    events.publish(WorkOrderDelivered(dispatch_id))  # changes made meanwhile follow the work order
    return True


def mark_transient(dispatch: Dispatch, error: str, status_code: int | None, actor: Actor,
                   retry_after: float | None = None) -> float | None:
    """Schedule the next attempt (returns the delay), or fail the dispatch if attempts are used up."""
    dispatch_id, attempt, practice_id = dispatch.id, dispatch.attempts, dispatch.practice_id
    delay = retry_delay(dispatch, retry_after)
    if delay is None:
        mark_permanent(dispatch, f"{error} (gave up after {attempt} attempts)", status_code, actor)
        return None
    if not finish(dispatch, state=DispatchState.PENDING, last_error=error[:500], last_status_code=status_code,
                  next_attempt_at=utcnow() + dt.timedelta(seconds=delay)):
        return None
    record("dispatch.retry_scheduled", "dispatch", dispatch_id, before={"state": "sending"},
           after={"state": "pending", "attempt": attempt, "error": error[:500],
                  "status_code": status_code, "retry_in_seconds": round(delay, 3)},
           actor=actor, practice_id=practice_id)
    return delay


def mark_permanent(dispatch: Dispatch, error: str, status_code: int | None, actor: Actor) -> bool:
    dispatch_id, attempt, case_id, practice_id = dispatch.id, dispatch.attempts, dispatch.case_id, dispatch.practice_id
    if not finish(dispatch, state=DispatchState.FAILED, last_error=error[:500], last_status_code=status_code,
                  next_attempt_at=None):
        return False
    db.session.execute(update(LabCase).where(LabCase.id == case_id).values(dispatch_error=error[:300]))
    record("dispatch.failed", "dispatch", dispatch_id, before={"state": "sending"},
           after={"state": "failed", "attempt": attempt, "error": error[:500], "status_code": status_code,
                  "case_id": case_id},
           actor=actor, practice_id=practice_id)
    return True


# --- the outbox sweep -------------------------------------------------------------------------------

def due_for_sweep(now: dt.datetime | None = None, limit: int = 500) -> list[Dispatch]:
    """API dispatches whose next attempt is due: pending ones, and attempts whose lease ran out."""
    now = now or utcnow()
    return list(db.session.scalars(
        select(Dispatch).where(
            Dispatch.channel == Channel.API,
            Dispatch.state.in_((DispatchState.PENDING, DispatchState.SENDING)),
            Dispatch.next_attempt_at <= now,
        ).order_by(Dispatch.next_attempt_at).limit(limit)
    ))


def sweep(now: dt.datetime | None = None) -> int:
    """Re-enqueue every due dispatch that has no live RQ job. Returns how many were handed to RQ.

    Job ids are deterministic (`dispatch-<id>-<attempt>`), so a job already queued, scheduled or
    running is left alone; when Redis is down nothing is lost and the next sweep tries again.
    """
    queue = get_queue()
    handed = 0
    for dispatch in due_for_sweep(now):
        if enqueue_now(queue, DELIVER_WORK_ORDER, dispatch.id, job_id=dispatch.job_id, due_at=dispatch.next_attempt_at):
            handed += 1
    return handed
