"""The one place that knows how a lab case may move between statuses.

Every change of status, whether from a drag on the board, a lab's click on its link, a lab API
event, a vendor webhook or a job, goes through :func:`move`. An illegal move raises
:class:`IllegalMove` with a message fit to show a person, and changes nothing.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from portal.audit.record import record
from portal.cases.models import business_day_spans
from portal.cases.risk import closed_days, refresh_risk
from portal.cases.status import LABELS, MAIN_LINE, PHASE, Status
from portal.clock import utcnow

__all__ = [  # Status and its tables live in portal/cases/status.py; re-exported for callers here
    "LAB", "LABELS", "MAIN_LINE", "PHASE", "PRACTICE", "TERMINAL", "TRANSITIONS", "IllegalMove", "Rule",
    "Status", "UNDO_SECONDS", "allowed_moves", "check", "move", "undo", "undoable",
]

if TYPE_CHECKING:
    from portal.audit.actor import Actor
    from portal.cases.models import LabCase


PRACTICE = "practice"
LAB = "lab"


@dataclass(frozen=True)
class Rule:
    action: str  # the verb written to the audit row: case.<action>
    needs_reason: bool = False
    by: frozenset[str] = frozenset({PRACTICE, LAB})


def _lab(action: str, needs_reason: bool = False) -> Rule:
    return Rule(action, needs_reason)


def _practice(action: str, needs_reason: bool = False) -> Rule:
    return Rule(action, needs_reason, frozenset({PRACTICE}))


_AT_LAB = {
    Status.ACKNOWLEDGED: _lab("acknowledge"),
    Status.IN_PRODUCTION: _lab("start_production"),
    Status.DISPATCHED: _lab("dispatch"),
    Status.ON_HOLD: _lab("hold", needs_reason=True),
    Status.RESCAN: _lab("request_rescan", needs_reason=True),
    Status.CANCELLED: _practice("cancel", needs_reason=True),
}


def _forward_from(status: Status) -> dict[Status, Rule]:
    later = MAIN_LINE[MAIN_LINE.index(status) + 1:]
    return {s: r for s, r in _AT_LAB.items() if s in later or s not in MAIN_LINE}


TRANSITIONS: dict[Status, dict[Status, Rule]] = {
    Status.DRAFT: {
        Status.SENT: _practice("send"),
        Status.CANCELLED: _practice("cancel", needs_reason=True),
    },
    Status.SENT: _forward_from(Status.SENT),
    Status.ACKNOWLEDGED: _forward_from(Status.ACKNOWLEDGED),
    Status.IN_PRODUCTION: _forward_from(Status.IN_PRODUCTION),
    Status.DISPATCHED: {
        Status.RECEIVED: _practice("receive"),
        Status.CANCELLED: _practice("cancel", needs_reason=True),
    },
    Status.RECEIVED: {Status.FITTED: _practice("fit")},
    Status.FITTED: {},
    # Resuming from hold is worked out from where the case was held (see allowed_moves).
    Status.ON_HOLD: {
        Status.RESCAN: _lab("request_rescan", needs_reason=True),
        Status.CANCELLED: _practice("cancel", needs_reason=True),
    },
    Status.RESCAN: {
        Status.DRAFT: _practice("rework"),
        Status.SENT: _practice("resend"),
        Status.CANCELLED: _practice("cancel", needs_reason=True),
    },
    Status.CANCELLED: {},
}

TERMINAL = frozenset(s for s, targets in TRANSITIONS.items() if not targets)


class IllegalMove(Exception):
    """A move the lifecycle refuses; str(exc) is the message shown to the person."""


def allowed_moves(case: LabCase, side: str = PRACTICE) -> dict[Status, Rule]:
    """The moves this case can make now, for someone on `side` (practice or lab)."""
    targets = dict(TRANSITIONS[case.status])
    if case.status is Status.ON_HOLD:
        held_from = case.held_from or Status.SENT
        targets[held_from] = _lab("resume")
        for status, rule in _forward_from(held_from).items():
            if status in MAIN_LINE:
                targets.setdefault(status, rule)
    return {s: r for s, r in targets.items() if side in r.by}


def check(case: LabCase, to: Status, side: str = PRACTICE, reason: str = "") -> Rule:
    """The rule for moving `case` to `to`, or IllegalMove saying why not."""
    current = case.status
    if to == current:
        raise IllegalMove(f"{case.number} is already {current.label}.")
    moves = allowed_moves(case, side)
    rule = moves.get(to)
    if rule is None:
        if current in TERMINAL:
            raise IllegalMove(f"{case.number} is {current.label}; a closed case can't move.")
        if to in TRANSITIONS[current] or to in allowed_moves(case, PRACTICE):
            raise IllegalMove(f"Only the practice can move {case.number} to {to.label}.")
        options = ", ".join(s.label for s in moves) or "nowhere"
        raise IllegalMove(
            f"{case.number} can't go from {current.label} to {to.label}. "
            f"From {current.label} it can go to: {options}."
        )
    if rule.needs_reason and not reason.strip():
        raise IllegalMove(f"Moving {case.number} to {to.label} needs a reason.")
    return rule


_STAMPS = {Status.SENT: "sent_at", Status.DISPATCHED: "dispatched_at", Status.RECEIVED: "received_at",
           Status.FITTED: "fitted_at"}
UNDO_SECONDS = 30
# A move the undo puts back only touched the case: a send dispatched a work order and a
# cancellation told the lab, and those cannot be called back.
NOT_UNDOABLE = frozenset({"send", "resend", "cancel"})


def undoable(event, actor: Actor, now: dt.datetime | None = None) -> bool:
    """Whether `actor` may still undo the move the audit row `event` records (see undo)."""
    action = event.action.split(".", 1)[1] if event.action.startswith("case.") else ""
    moves = {rule.action for targets in TRANSITIONS.values() for rule in targets.values()} | {"resume"}
    age = ((now or utcnow()) - event.occurred_at).total_seconds()
    return (event.entity_type == "lab_case" and action in moves and action not in NOT_UNDOABLE
            and event.actor_type == "user" and event.actor_id == str(actor.id) and 0 <= age <= UNDO_SECONDS)


def undo(case: LabCase, event, *, actor: Actor, latest_seq: int, now: dt.datetime | None = None) -> Status:
    """Put back the move that the audit row `event` recorded, made by mistake a moment ago: the
    status, its reason and everything else the move overwrote (time stamps, where it was held
    from, the shipment), from the row's `before`. Only the person who moved it, within
    UNDO_SECONDS, while it is still the case's newest change (`latest_seq`, the newest audit row
    of the case) and not a send or a cancellation. Audited as case.undo, naming the row it undoes.
    Raises IllegalMove and changes nothing otherwise; the caller commits."""
    import json

    now = now or utcnow()
    if event.entity_id != str(case.id) or not undoable(event, actor, now):
        raise IllegalMove(f"That move of {case.number} can't be undone any more: undo works for "
                          f"{UNDO_SECONDS} seconds, for the person who made it, and not for a send or a cancellation.")
    before, after = json.loads(event.before or "{}"), json.loads(event.after or "{}")
    if event.seq != latest_seq or case.status.value != after.get("status"):
        raise IllegalMove(f"{case.number} has changed since that move; open the case to put it right.")
    moved_from = case.status
    case.status = Status(before["status"])
    case.status_reason = before.get("reason", "")
    if "held_from" in before:
        case.held_from = Status(before["held_from"]) if before["held_from"] else None
    for name in ("closed_at", *_STAMPS.values()):
        if name in before:
            setattr(case, name, dt.datetime.fromisoformat(before[name]) if before[name] else None)
    for name in ("carrier", "tracking_number"):
        if name in before:
            setattr(case, name, before[name] or "")
    if "lab_eta" in before:
        case.lab_eta = dt.date.fromisoformat(before["lab_eta"]) if before["lab_eta"] else None
    if any(name in before for name in ("sent_at", "dispatched_at", "received_at")):
        business_day_spans(case, closed_days(case.practice_id))
    case.updated_at = now
    refresh_risk(case)
    record("case.undo", "lab_case", case.id, before={"status": moved_from.value, "reason": after.get("reason", "")},
           after={"status": case.status.value, "reason": case.status_reason, "undoes": event.seq,
                  "undone": event.action}, actor=actor, practice_id=case.practice_id)
    from portal import events
    from portal.cases.events import CaseMoved

    events.publish(CaseMoved(case, moved_from, actor))
    return case.status


def move(
    case: LabCase,
    to: Status | str,
    *,
    actor: Actor,
    reason: str = "",
    detail: dict | None = None,
    now: dt.datetime | None = None,
) -> Rule:
    """Move `case` to `to` on behalf of `actor`, writing the audit row in the same transaction.

    The caller commits. Raises IllegalMove (and changes nothing) when the move is not allowed.
    """
    to = Status(to)
    side = LAB if actor.kind == "lab" else PRACTICE
    rule = check(case, to, side, reason)
    now = now or utcnow()
    before = {"status": case.status.value, "reason": case.status_reason}
    # What else the move overwrites, as it was (what undo() puts back): only what changes.
    was = {"held_from": case.held_from.value if case.held_from else None, "closed_at": case.closed_at,
           "carrier": case.carrier, "tracking_number": case.tracking_number, "lab_eta": case.lab_eta,
           **{name: getattr(case, name) for name in _STAMPS.values()}}
    if to is Status.ON_HOLD:
        case.held_from = case.status
    elif case.status is Status.ON_HOLD:
        case.held_from = None
    case.status = to
    case.status_reason = reason.strip() if rule.needs_reason or to is Status.ON_HOLD else ""
    stamp = _STAMPS.get(to)
    # Resuming a case held at Sent does not send it again: the lab's clock (the reports'
    # turnaround) runs from the send. A resend after a rescan does restart it.
    if stamp and rule.action != "resume":
        setattr(case, stamp, now)
        if stamp in ("sent_at", "dispatched_at", "received_at"):  # the reports' stored turnaround
            business_day_spans(case, closed_days(case.practice_id))
    if to in TERMINAL:
        case.closed_at = now
    detail = detail or {}
    for field in ("carrier", "tracking_number"):
        if detail.get(field):
            setattr(case, field, detail[field])
    if detail.get("eta"):
        case.lab_eta = detail["eta"] if isinstance(detail["eta"], dt.date) else dt.date.fromisoformat(detail["eta"])
    case.updated_at = now
    refresh_risk(case)
    after = {"status": to.value, "reason": case.status_reason}
    after.update({k: str(v) for k, v in detail.items() if v not in (None, "")})
    now_values = {"held_from": case.held_from.value if case.held_from else None}
    before.update({k: v for k, v in was.items() if now_values.get(k, getattr(case, k, None)) != v})
    record(
        f"case.{rule.action}", "lab_case", case.id, before=before, after=after,
        actor=actor, practice_id=case.practice_id,
    )
    from portal import events
    from portal.cases.events import CaseMoved

    events.publish(CaseMoved(case, Status(before["status"]), actor))
    return rule
