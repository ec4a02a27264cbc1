"""Applying a lab's status event to its case (contracts/lab-api.md "Lab -> Lab Manager").

Idempotent (W4): the event is kept in LabEvent, unique per lab by event id and by webhook id, in
the same transaction as its effect. Out of order (W6): an event older than the newest one applied
for the same order, or one that would move the case back along the main line, is kept as
"ignored" with an audit row and changes nothing.
"""
from __future__ import annotations

import datetime as dt
import hashlib

from sqlalchemy import func, or_, select

from portal.audit.actor import Actor
from portal.audit.service import record
from portal.cases import lifecycle
from portal.cases.lifecycle import MAIN_LINE, IllegalMove, Status
from portal.cases.models import LabCase
from portal.dispatch.models import Dispatch, DispatchState, LabEvent
from portal.extensions import db
from portal.labs.models import Lab
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


class EventError(ValueError):
    """The event can't be applied; str(exc) goes back to the lab as {"error": ...} with 422."""


def active_secrets(lab: Lab) -> list[str]:
    return [s.secret for s in lab.secrets if s.revoked_at is None]


def seen_webhook(lab: Lab, webhook_id: str) -> bool:
    return db.session.scalar(select(LabEvent.id).where(
        LabEvent.lab_id == lab.id, LabEvent.webhook_id == webhook_id).limit(1)) is not None


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


def apply_event(lab: Lab, webhook_id: str, body: object, raw: bytes) -> str:
    """Apply one verified event. Returns "applied", "noop", "ignored" or "duplicate".

    Flushes the LabEvent row before the effect, so two copies arriving at once collide on the
    unique constraint (the caller answers the loser 204). Raises EventError for a 422.
    """
    event = parse(body)
    if db.session.scalar(select(LabEvent.id).where(
            LabEvent.lab_id == lab.id,
            or_(LabEvent.event_id == event["event_id"], LabEvent.webhook_id == webhook_id)).limit(1)):
        return "duplicate"
    dispatch = db.session.get(Dispatch, event["order_id"])
    if dispatch is None or dispatch.lab_id != lab.id:
        raise EventError(f"unknown order {event['order_id'][:36]!r}")
    case = db.session.get(LabCase, dispatch.case_id)
    if event["case_number"] and event["case_number"] != case.number:
        raise EventError(f"order {dispatch.id} is case {case.number}, not {event['case_number'][:20]}")
    actor = Actor.lab(lab, source=f"POST /api/labs/{lab.id}/events")
    outcome, why = _decide(case, dispatch, event)
    row = LabEvent(lab_id=lab.id, event_id=event["event_id"], webhook_id=webhook_id, dispatch_id=dispatch.id,
                   type=event["type"], occurred_at=event["occurred_at"], outcome=outcome,
                   payload_sha256=hashlib.sha256(raw).hexdigest(), received_at=utcnow())
    db.session.add(row)
    db.session.flush()
    if outcome == "applied":
        try:
            _apply(case, lab, dispatch, event, actor)
        except IllegalMove as exc:
            raise EventError(str(exc)) from None
        _confirm_delivery(dispatch, case, actor)
    else:
        record(f"lab_event.{outcome}", "lab_case", case.id,
               after={"event_id": event["event_id"], "type": event["type"], "order_id": dispatch.id,
                      "reason": why},
               actor=actor, practice_id=case.practice_id)
    return outcome


def _newest_status_event(dispatch: Dispatch) -> dt.datetime | None:
    return db.session.scalar(select(func.max(LabEvent.occurred_at)).where(
        LabEvent.dispatch_id == dispatch.id, LabEvent.outcome.in_(("applied", "noop")),
        LabEvent.type != "message"))


def _decide(case: LabCase, dispatch: Dispatch, event: dict) -> tuple[str, str]:
    kind = event["type"]
    if kind == "message":
        return "applied", ""
    if dispatch.state is DispatchState.SUPERSEDED:
        return "ignored", "the order was replaced by a newer one"
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
