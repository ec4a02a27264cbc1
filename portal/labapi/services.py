"""A lab's status events (contracts/lab-api.md "Lab -> Lab Manager"): accepted in the request,
applied by a job.

In the request (W5), `accept_event` checks the event, refuses with EventError (422) what can't
be applied (a bad body, an unknown order, a move the case can't make now: a read-only check),
and stores it as a "pending" LabEvent, unique per lab by event id and by webhook id (W4). A job
(jobs/labapi.py) is enqueued after the commit with a deterministic id; `apply_stored` re-reads
the case (W6), applies the event through the lifecycle with the audit rows, and marks it applied,
noop or ignored. An event older than the newest one applied for the same order, one that would
move the case back along the main line, or a move that became impossible meanwhile is kept as
"ignored" with an audit row and changes nothing. The outbox sweep re-enqueues events still
pending, so one is never lost while Redis is away.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json

from sqlalchemy import bindparam, func, or_, select

from portal.audit.actor import Actor
from portal.audit.service import record
from portal.cases import lifecycle
from portal.cases.lifecycle import LAB, MAIN_LINE, IllegalMove, Status
from portal.cases.models import LabCase
from portal.dispatch.models import Dispatch, DispatchState, LabEvent
from portal.extensions import db
from portal.labs.models import Lab, LabSecret
from portal.practices.models import utcnow

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
APPLY = "jobs.labapi.apply_event"


class EventError(ValueError):
    """The event can't be applied; str(exc) goes back to the lab as {"error": ...} with 422."""


# The endpoint's statements, built once: building a statement costs more than running it here.
_LAB_SECRETS = (
    select(Lab.id, LabSecret.secret)
    .outerjoin(LabSecret, (LabSecret.lab_id == Lab.id) & LabSecret.revoked_at.is_(None))
    .where(Lab.id == bindparam("lab_id")).order_by(LabSecret.id)
)
_SEEN = select(LabEvent.id).where(
    LabEvent.lab_id == bindparam("lab_id"),
    or_(LabEvent.event_id == bindparam("event_id"), LabEvent.webhook_id == bindparam("webhook_id"))).limit(1)
_ORDER_AND_CASE = (
    select(Dispatch, LabCase).join(LabCase, LabCase.id == Dispatch.case_id)
    .where(Dispatch.id == bindparam("order_id"), Dispatch.lab_id == bindparam("lab_id"))
)


def lab_secrets(lab_id: int) -> list[str] | None:
    """The lab's active signing secrets, in one query; None when there is no such lab."""
    rows = db.session.execute(_LAB_SECRETS, {"lab_id": lab_id}).all()
    return [r.secret for r in rows if r.secret] if rows else None


def seen_webhook(lab_id: int, webhook_id: str) -> bool:
    return db.session.scalar(select(LabEvent.id).where(
        LabEvent.lab_id == lab_id, LabEvent.webhook_id == webhook_id).limit(1)) is not None


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
    """The RQ job id of the job that applies a stored event (the relay and the sweep agree)."""
    return f"lab-event-{lab_event_id}"


def job_options() -> dict:
    return {"job_timeout": 60, "result_ttl": 3600, "failure_ttl": 7 * 86400}


def accept_event(lab_id: int, webhook_id: str, body: object, raw: bytes) -> str:
    """Check one verified event and store it to be applied. Returns "pending" or "duplicate".

    Reads the case but changes nothing but the new LabEvent row, which is flushed, so two copies
    arriving at once collide on the unique constraint (the caller answers the loser 204); the job
    that applies it is enqueued after the commit. Raises EventError for a 422.
    """
    try:
        event = parse(body)
    except EventError:
        if seen_webhook(lab_id, webhook_id):  # a delivery already handled: 2xx whatever it holds
            return "duplicate"
        raise
    if db.session.scalar(_SEEN, {"lab_id": lab_id, "event_id": event["event_id"], "webhook_id": webhook_id}):
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
    row = LabEvent(lab_id=lab_id, event_id=event["event_id"], webhook_id=webhook_id, dispatch_id=dispatch.id,
                   type=event["type"], occurred_at=event["occurred_at"], outcome=PENDING,
                   payload_sha256=hashlib.sha256(raw).hexdigest(), payload=json.dumps(body, separators=(",", ":")),
                   received_at=utcnow())
    db.session.add(row)
    db.session.flush()
    from portal.queue import enqueue_after_commit

    enqueue_after_commit(APPLY, row.id, job_id=job_id(row.id), **job_options())
    return PENDING


def apply_stored(lab_event_id: int) -> str:
    """Apply one stored event, in the job. Returns "applied", "noop", "ignored", or "nothing to do"
    when it is no longer pending (applied already: a repeat of the job changes nothing)."""
    row = db.session.scalar(select(LabEvent).where(LabEvent.id == lab_event_id, LabEvent.outcome == PENDING)
                            .with_for_update())
    if row is None:
        return "nothing to do"
    lab = db.session.get(Lab, row.lab_id)
    dispatch = db.session.get(Dispatch, row.dispatch_id)
    # Re-read the case as it is now (W6), locked so two events of one case apply one after the other.
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


def sweep(limit: int = 500) -> int:
    """Hand RQ every stored event still pending that has no live job. Returns how many."""
    from portal.queue import enqueue_now, get_queue

    queue = get_queue()
    ids = db.session.scalars(select(LabEvent.id).where(LabEvent.outcome == PENDING)
                             .order_by(LabEvent.id).limit(limit)).all()
    return sum(1 for i in ids if enqueue_now(queue, APPLY, i, job_id=job_id(i), **job_options()))


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
        from portal.messages.services import record_lab_message

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
