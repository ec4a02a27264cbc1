"""A lab's status events (docs/lab-api.md "Lab -> Lab Manager"): accepted in the request,
applied by a job.

In the request (docs/reliability.md W5), `accept_event` checks the event, refuses with EventError (422) what can't
be applied (a bad body, an unknown order, a move the case can't make now: a read-only check),
and stores it as a "pending" LabEvent, unique per lab by event id and by webhook id (docs/reliability.md W4). After
the commit the lab's drain job (jobs/labapi.py `apply_pending`) is enqueued unless one is already
waiting, so a burst of events costs one job; it applies the lab's pending events in the order
they arrived, each in its own transaction. `apply_stored` re-reads the case (docs/reliability.md W6), applies the
event through the lifecycle with the audit rows, and marks it applied, noop or ignored. An event older than the newest one applied for the same order, one that would
move the case back along the main line, or a move that became impossible meanwhile is kept as
"ignored" with an audit row and changes nothing. The outbox sweep enqueues a drain job for
any lab whose events stay pending, so one is never lost while Redis is away.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import bindparam, func, insert, select

from portal.audit.actor import Actor
from portal.audit.record import record
from portal.cases import lifecycle
from portal.cases.lifecycle import LAB, IllegalMove
from portal.cases.models import LabCase
from portal.cases.status import MAIN_LINE, Status
from portal.clock import utcnow
from portal.dispatch.models import Dispatch, DispatchState, LabEvent
from portal.dispatch.notices import release_next
from portal.extensions import db
from portal.labs.models import Lab, LabSecret
from portal.messages.services import record_lab_message
from portal.nul import holds_nul
from portal.queue import APPLY_LAB_EVENTS, enqueue_now, enqueue_once_after_commit, get_queue

REQUIRED = {
    "acknowledged": (), "in_production": (), "resumed": (),
    "dispatched": ("carrier", "tracking_number"),
    "rejected": ("reason",), "on_hold": ("reason",), "rescan_requested": ("reason",),
    "message": ("text",),
}
FORWARD = {"acknowledged": Status.ACKNOWLEDGED, "in_production": Status.IN_PRODUCTION,
           "dispatched": Status.DISPATCHED}
RANK = {status: n for n, status in enumerate(MAIN_LINE)}
LIMITS = {"reason": 500, "carrier": 60, "tracking_number": 100, "text": 5000, "eta": 10}
PENDING = "pending"


class EventError(ValueError):
    """The event can't be applied; str(exc) goes back to the lab as {"error": ...} with 422."""


# The endpoint's statements, built once: building a statement costs more than running it here.
def _seen_by(column, param: str):
    return (select(LabEvent.id).where(LabEvent.lab_id == bindparam("lab_id"), column == bindparam(param))
            .limit(1).scalar_subquery())


# The lab's active secrets, and whether this delivery or this event was stored before, in one query.
_INBOUND = (
    select(Lab.id, LabSecret.secret, _seen_by(LabEvent.webhook_id, "webhook_id").label("seen_webhook"),
           _seen_by(LabEvent.event_id, "event_id").label("seen_event"))
    .outerjoin(LabSecret, (LabSecret.lab_id == Lab.id) & LabSecret.revoked_at.is_(None))
    .where(Lab.id == bindparam("lab_id")).order_by(LabSecret.id)
)
_ORDER_AND_CASE = (
    select(Dispatch, LabCase).join(LabCase, LabCase.id == Dispatch.case_id)
    .where(Dispatch.id == bindparam("order_id"), Dispatch.lab_id == bindparam("lab_id"))
)
_STORE = insert(LabEvent.__table__).returning(LabEvent.__table__.c.id)


@dataclass(frozen=True)
class Inbound:
    """What the endpoint knows before it trusts a delivery: the secrets to verify it with, and
    whether its webhook id or its event id was stored before (docs/reliability.md W4)."""

    secrets: list[str]
    seen_webhook: bool
    seen_event: bool


def inbound(lab_id: int, webhook_id: str, event_id: str | None) -> Inbound | None:
    """One query; None when there is no such lab. `event_id` is read from the body before the
    signature is checked, so it is only trusted (as a duplicate) once that check has passed."""
    rows = db.session.execute(_INBOUND, {"lab_id": lab_id, "webhook_id": webhook_id,
                                         "event_id": event_id or ""}).all()
    if not rows:
        return None
    return Inbound(secrets=[r.secret for r in rows if r.secret], seen_webhook=rows[0].seen_webhook is not None,
                   seen_event=event_id is not None and rows[0].seen_event is not None)


def _text(data: dict, name: str) -> str:
    value = data.get(name)
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise EventError(f"data.{name} must be a string")
    if len(value) > LIMITS[name]:
        raise EventError(f"data.{name} is longer than {LIMITS[name]} characters")
    return value.strip()


def _parse_time(value) -> dt.datetime:
    if not isinstance(value, str):
        raise EventError("occurred_at must be an ISO 8601 date-time")
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise EventError("occurred_at must be an ISO 8601 date-time") from None
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return when


def parse(body: object) -> dict:
    """Check the shape of an event; returns the fields used. Raises EventError."""
    if not isinstance(body, dict):
        raise EventError("the body must be a JSON object")
    if holds_nul(body):
        raise EventError("text must not contain NUL characters (\\u0000)")
    for name in ("event_id", "order_id", "type", "occurred_at"):
        if not isinstance(body.get(name), str) or not body[name].strip():
            raise EventError(f"{name} is required")
    if len(body["event_id"]) > 100 or len(body["order_id"]) > 36:
        raise EventError("event_id or order_id is too long")
    kind = body["type"]
    if kind not in REQUIRED:
        raise EventError(f"unknown type {kind[:40]!r}; expected one of: {', '.join(REQUIRED)}")
    data = body.get("data") or {}
    if not isinstance(data, dict):
        raise EventError("data must be an object")
    fields = {name: _text(data, name) for name in ("reason", "carrier", "tracking_number", "text", "eta")}
    for name in REQUIRED[kind]:
        if not fields[name]:
            raise EventError(f"a {kind} event needs data.{name}")
    if fields["eta"]:
        try:
            fields["eta"] = dt.date.fromisoformat(fields["eta"])
        except ValueError:
            raise EventError("data.eta must be a date like 2026-12-03") from None
    case_number = body.get("case_number")
    if case_number is not None and not isinstance(case_number, str):
        raise EventError("case_number must be a string")
    return {"event_id": body["event_id"], "order_id": body["order_id"], "type": kind,
            "occurred_at": _parse_time(body["occurred_at"]), "case_number": case_number, **fields}


def job_id(lab_event_id: int) -> str:
    """The RQ job id of a job that applies one stored event (APPLY_LAB_EVENT)."""
    return f"lab-event-{lab_event_id}"


def drain_key(lab_id: int) -> str:
    """The key the requests of one lab share one waiting APPLY_LAB_EVENTS job by."""
    return f"lab-events-{lab_id}"


def accept_event(lab_id: int, webhook_id: str, body: object, raw: bytes, *, seen_event: bool = False) -> str:
    """Check one verified event and store it to be applied. Returns "pending" or "duplicate".

    `seen_event`: the event id was stored before (from `inbound`), so this is a repeat.
    Reads the case but changes nothing but the new LabEvent row, which is inserted at once, so two
    copies arriving together collide on the unique constraint (the caller answers the loser 204).
    After the commit the lab's drain job is enqueued, unless one is already waiting: a burst of
    events shares one job. Raises EventError for a 422.
    """
    event = parse(body)
    if seen_event:
        return "duplicate"
    # The order and its case in one query (the request only reads them).
    found = db.session.execute(_ORDER_AND_CASE, {"order_id": event["order_id"], "lab_id": lab_id}).one_or_none()
    if found is None:
        raise EventError(f"unknown order {event['order_id'][:36]!r}")
    dispatch, case = found
    if event["case_number"] and event["case_number"] != case.number:
        raise EventError(f"order {dispatch.id} is case {case.number}, not {event['case_number'][:20]}")
    # The job decides for good on the case as it is then; here only whether to refuse it now.
    # The newest-event query is needed only when the move looks impossible: an event older than
    # one already applied is stored (the job ignores it), not refused.
    if _decide(case, dispatch, event, newest=None)[0] == "applied":
        try:
            _check_move(case, event)
        except EventError:
            if _decide(case, dispatch, event)[0] == "applied":
                raise
    # A plain INSERT: the ORM's unit of work costs more than the rest of the request here.
    db.session.execute(_STORE, {
        "lab_id": lab_id, "event_id": event["event_id"], "webhook_id": webhook_id, "dispatch_id": dispatch.id,
        "type": event["type"], "occurred_at": event["occurred_at"], "outcome": PENDING,
        "payload_sha256": hashlib.sha256(raw).hexdigest(), "payload": json.dumps(body, separators=(",", ":")),
        "received_at": utcnow()})
    enqueue_once_after_commit(drain_key(lab_id), APPLY_LAB_EVENTS, lab_id)
    return PENDING


def pending_ids(lab_id: int, batch: int = 200) -> Iterator[int]:
    """The lab's pending events in the order they arrived, read a batch at a time as the caller
    commits between them. An event that fails stays pending and is not read again in this pass;
    one committed after the pass began (a higher id) is read, or its own job picks it up."""
    after = 0
    while True:
        ids = db.session.scalars(select(LabEvent.id).where(
            LabEvent.lab_id == lab_id, LabEvent.outcome == PENDING, LabEvent.id > after)
            .order_by(LabEvent.id).limit(batch)).all()
        if not ids:
            return
        yield from ids
        after = ids[-1]


def apply_stored(lab_event_id: int) -> str:
    """Apply one stored event, in the job. Returns "applied", "noop", "ignored", or "nothing to do"
    when it is no longer pending (applied already: a repeat of the job changes nothing)."""
    row = db.session.scalar(select(LabEvent).where(LabEvent.id == lab_event_id, LabEvent.outcome == PENDING)
                            .with_for_update())
    if row is None:
        return "nothing to do"
    lab = db.session.get(Lab, row.lab_id)
    dispatch = db.session.get(Dispatch, row.dispatch_id)
    # Re-read the case as it is now (docs/reliability.md W6), locked so two events of one case apply one after the other.
    case = db.session.get(LabCase, dispatch.case_id, with_for_update=True, populate_existing=True)
    event = parse(json.loads(row.payload))
    actor = Actor.lab(lab, source=f"POST /api/labs/{lab.id}/events")
    outcome, why = _decide(case, dispatch, event)
    if outcome == "applied":
        try:
            _apply(case, lab, dispatch, event, actor)  # the lifecycle checks before it changes anything
        except IllegalMove as exc:
            outcome, why = "ignored", f"the case could no longer make this move: {exc}"
        else:
            _confirm_delivery(dispatch, case, actor)
    if outcome != "applied":
        record(f"lab_event.{outcome}", "lab_case", case.id,
               after={"event_id": event["event_id"], "type": event["type"], "order_id": dispatch.id,
                      "reason": why},
               actor=actor, practice_id=case.practice_id)
    row.outcome = outcome
    db.session.flush()
    return outcome


def sweep(grace_seconds: int = 30) -> int:
    """Hand RQ a drain job for every lab with an event pending longer than `grace_seconds`
    (younger ones have their job waiting). Returns how many labs. The job id is fixed per lab, so
    sweeps don't pile up jobs, and it doesn't depend on the requests' claim, which may have
    outlived a lost job."""
    queue = get_queue()
    cutoff = utcnow() - dt.timedelta(seconds=grace_seconds)
    labs = db.session.scalars(select(LabEvent.lab_id).where(
        LabEvent.outcome == PENDING, LabEvent.received_at <= cutoff).distinct().order_by(LabEvent.lab_id)).all()
    return sum(1 for lab_id in labs
               if enqueue_now(queue, APPLY_LAB_EVENTS, lab_id, job_id=f"{drain_key(lab_id)}-sweep"))


def _check_move(case: LabCase, event: dict) -> None:
    """Read-only: would the lifecycle let the lab make this move now? EventError (422) if not."""
    kind = event["type"]
    if kind == "message":
        return
    reason = ""
    if kind in FORWARD:
        target = FORWARD[kind]
    elif kind in ("rejected", "on_hold"):
        target, reason = Status.ON_HOLD, event["reason"]
    elif kind == "rescan_requested":
        target, reason = Status.RESCAN, event["reason"]
    else:  # resumed
        target = case.held_from or Status.SENT
    try:
        lifecycle.check(case, target, LAB, reason)
    except IllegalMove as exc:
        raise EventError(str(exc)) from None


def _newest_status_event(dispatch: Dispatch) -> dt.datetime | None:
    return db.session.scalar(select(func.max(LabEvent.occurred_at)).where(
        LabEvent.dispatch_id == dispatch.id, LabEvent.outcome.in_(("applied", "noop")),
        LabEvent.type != "message"))


_LOOK_UP = object()


def _decide(case: LabCase, dispatch: Dispatch, event: dict, newest=_LOOK_UP) -> tuple[str, str]:
    """applied, noop or ignored (with why). `newest=None` leaves out the check against the newest
    event already applied for the order (one query)."""
    kind = event["type"]
    if kind == "message":
        return "applied", ""
    if dispatch.state is DispatchState.SUPERSEDED:
        return "ignored", "the order was replaced by a newer one"
    if newest is _LOOK_UP:
        newest = _newest_status_event(dispatch)
    if newest is not None and event["occurred_at"] < newest:
        return "ignored", "older than an event already applied for this order"
    where = case.held_from if case.status is Status.ON_HOLD and case.held_from else case.status
    target = FORWARD.get(kind)
    if target is not None and where in RANK and RANK[target] <= RANK[where]:
        if target is where and case.status is not Status.ON_HOLD:
            return "noop", f"the case is already {case.status.label}"
        return "ignored", f"the case is already {case.status.label}; it does not move back"
    if kind in ("on_hold", "rejected") and case.status is Status.ON_HOLD:
        return "noop", "the case is already on hold"
    if kind == "rescan_requested" and case.status is Status.RESCAN:
        return "noop", "the case is already returned for rescan"
    if kind == "resumed" and case.status is not Status.ON_HOLD:
        return "noop", "the case is not on hold"
    return "applied", ""


def _apply(case: LabCase, lab: Lab, dispatch: Dispatch, event: dict, actor: Actor) -> None:
    kind = event["type"]
    detail = {"event_id": event["event_id"], "order_id": dispatch.id}
    if kind == "message":
        record_lab_message(case, lab, event["text"], actor, direction="in")
    elif kind in FORWARD:
        if kind == "dispatched":
            detail.update(carrier=event["carrier"], tracking_number=event["tracking_number"],
                          eta=event["eta"] or None)
        elif event["eta"]:
            detail["eta"] = event["eta"]
        lifecycle.move(case, FORWARD[kind], actor=actor, detail=detail)
    elif kind == "rejected":
        lifecycle.move(case, Status.ON_HOLD, actor=actor, reason=f"Rejected by lab: {event['reason']}"[:500],
                       detail=detail)
    elif kind == "on_hold":
        lifecycle.move(case, Status.ON_HOLD, actor=actor, reason=event["reason"], detail=detail)
    elif kind == "rescan_requested":
        lifecycle.move(case, Status.RESCAN, actor=actor, reason=event["reason"], detail=detail)
    elif kind == "resumed":
        lifecycle.move(case, case.held_from or Status.SENT, actor=actor, detail=detail)


def _confirm_delivery(dispatch: Dispatch, case: LabCase, actor: Actor) -> None:
    """A lab that reports on an order has it, whatever our last attempt concluded."""
    if dispatch.state not in (DispatchState.PENDING, DispatchState.SENDING, DispatchState.FAILED):
        return
    before = dispatch.state.value
    dispatch.state, dispatch.delivered_at, dispatch.next_attempt_at = DispatchState.DELIVERED, utcnow(), None
    case.dispatch_error = ""
    record("dispatch.delivered", "dispatch", dispatch.id, before={"state": before},
           after={"state": "delivered", "via": "lab event", "case_id": case.id},
           actor=actor, practice_id=case.practice_id)
    release_next(dispatch.id)  # changes the practice made meanwhile follow the work order
