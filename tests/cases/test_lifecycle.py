"""The transition table, move by move: what is allowed, for whom, what it writes, and what a
refused move leaves behind (nothing).

The expected table below is written out by hand from the product rules, not derived from
portal.cases.lifecycle, so a slip in the module's table shows up here."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent, AuditHead
from portal.audit.record import verify_chain
from portal.cases import lifecycle, services
from portal.cases.lifecycle import IllegalMove, Status
from portal.cases.models import LabCase
from portal.extensions import db
from tests import factories

S = Status
P, L = "practice", "lab"
BOTH = {P, L}
# (from, to) -> (audit action, who may do it, needs a reason). ON_HOLD rows assume it was held from SENT.
ALLOWED: dict[tuple[Status, Status], tuple[str, set[str], bool]] = {
    (S.DRAFT, S.SENT): ("send", {P}, False),
    (S.DRAFT, S.CANCELLED): ("cancel", {P}, True),
    (S.SENT, S.ACKNOWLEDGED): ("acknowledge", BOTH, False),
    (S.SENT, S.IN_PRODUCTION): ("start_production", BOTH, False),
    (S.SENT, S.DISPATCHED): ("dispatch", BOTH, False),
    (S.SENT, S.ON_HOLD): ("hold", BOTH, True),
    (S.SENT, S.RESCAN): ("request_rescan", BOTH, True),
    (S.SENT, S.CANCELLED): ("cancel", {P}, True),
    (S.ACKNOWLEDGED, S.IN_PRODUCTION): ("start_production", BOTH, False),
    (S.ACKNOWLEDGED, S.DISPATCHED): ("dispatch", BOTH, False),
    (S.ACKNOWLEDGED, S.ON_HOLD): ("hold", BOTH, True),
    (S.ACKNOWLEDGED, S.RESCAN): ("request_rescan", BOTH, True),
    (S.ACKNOWLEDGED, S.CANCELLED): ("cancel", {P}, True),
    (S.IN_PRODUCTION, S.DISPATCHED): ("dispatch", BOTH, False),
    (S.IN_PRODUCTION, S.ON_HOLD): ("hold", BOTH, True),
    (S.IN_PRODUCTION, S.RESCAN): ("request_rescan", BOTH, True),
    (S.IN_PRODUCTION, S.CANCELLED): ("cancel", {P}, True),
    (S.DISPATCHED, S.RECEIVED): ("receive", {P}, False),
    (S.DISPATCHED, S.CANCELLED): ("cancel", {P}, True),
    (S.RECEIVED, S.FITTED): ("fit", {P}, False),
    (S.ON_HOLD, S.SENT): ("resume", BOTH, False),
    (S.ON_HOLD, S.ACKNOWLEDGED): ("acknowledge", BOTH, False),
    (S.ON_HOLD, S.IN_PRODUCTION): ("start_production", BOTH, False),
    (S.ON_HOLD, S.DISPATCHED): ("dispatch", BOTH, False),
    (S.ON_HOLD, S.RESCAN): ("request_rescan", BOTH, True),
    (S.ON_HOLD, S.CANCELLED): ("cancel", {P}, True),
    (S.RESCAN, S.DRAFT): ("rework", {P}, False),
    (S.RESCAN, S.SENT): ("resend", {P}, False),
    (S.RESCAN, S.CANCELLED): ("cancel", {P}, True),
}
STARTS = list(Status)


def _allowed_from(start: Status) -> list[tuple[Status, str]]:
    return [(b, side) for (a, b), (_, sides, _) in ALLOWED.items() if a is start for side in sorted(sides)]


def _refused_from(start: Status) -> list[tuple[Status, str]]:
    return [(b, side) for b in Status for side in (P, L)
            if side not in ALLOWED.get((start, b), ("", set(), False))[1]]

def _actor(world, side: str) -> Actor:
    return Actor.lab(world.lab) if side == L else Actor.user(world.users["coordinator"])


def _audit_count() -> int:
    return db.session.scalar(select(func.count()).select_from(AuditEvent))


def _state(case: LabCase) -> dict:
    return {c.key: getattr(case, c.key) for c in LabCase.__table__.columns}


def _db_state(case_id: int) -> dict:
    db.session.expire_all()
    return _state(db.session.get(LabCase, case_id))


def test_the_expected_table_matches_the_module():
    """Every pair is either in ALLOWED (for the right sides) or refused: nothing is left out."""
    for (a, b), (action, sides, needs_reason) in ALLOWED.items():
        if a is S.ON_HOLD:
            continue  # worked out from held_from; covered by the hold tests below
        rule = lifecycle.TRANSITIONS[a][b]
        assert (rule.action, set(rule.by), rule.needs_reason) == (action, sides, needs_reason), (a, b)
    for a, targets in lifecycle.TRANSITIONS.items():
        for b in targets:
            assert (a, b) in ALLOWED, f"{a} -> {b} is in the module but not in this test's table"
    assert lifecycle.TERMINAL == {S.FITTED, S.CANCELLED}


# One world per starting status, a fresh case per move: a world per move is slow on PostgreSQL.
@pytest.mark.parametrize("start", STARTS, ids=str)
def test_every_allowed_move(world, start):
    for to, side in _allowed_from(start):
        action, _, needs_reason = ALLOWED[(start, to)]
        case = factories.case(world, start)
        rows = _audit_count()
        reason = "  scan has a void on 11  " if needs_reason else ""

        rule = lifecycle.move(case, to, actor=_actor(world, side), reason=reason)
        db.session.commit()

        where = f"{start} -> {to} by {side}"
        assert rule.action == action, where
        assert db.session.scalar(select(LabCase.status).where(LabCase.id == case.id)) is to, where
        assert _audit_count() == rows + 1, where
        row = db.session.scalar(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))
        assert (row.action, row.entity_type, row.entity_id) == (f"case.{action}", "lab_case", str(case.id))
        assert row.actor_type == ("lab" if side == L else "user"), where
        assert row.practice_id == world.practice.id
        assert f'"status":"{start.value}"' in row.before and f'"status":"{to.value}"' in row.after
        if needs_reason:
            assert case.status_reason == "scan has a void on 11"
            assert '"reason":"scan has a void on 11"' in row.after
    assert list(verify_chain()) == []


@pytest.mark.parametrize("start", STARTS, ids=str)
def test_every_refused_move_changes_nothing(world, start):
    case = factories.case(world, start)
    before, rows = _state(case), _audit_count()
    head = db.session.get(AuditHead, 1).seq
    refused = _refused_from(start)
    assert refused

    for to, side in refused:
        with pytest.raises(IllegalMove) as exc:
            lifecycle.move(case, to, actor=_actor(world, side), reason="a reason")
        assert case.number in str(exc.value), (to, side)
        assert _state(case) == before, (to, side)
    db.session.commit()  # even a commit after the refusals writes nothing

    assert _db_state(case.id) == before
    assert _audit_count() == rows
    assert db.session.get(AuditHead, 1).seq == head


@pytest.mark.parametrize(("start", "to", "side", "expected"), [
    (S.SENT, S.SENT, P, "is already Sent."),
    (S.FITTED, S.RECEIVED, P, "is Fitted; a closed case can't move."),
    (S.CANCELLED, S.DRAFT, P, "is Cancelled; a closed case can't move."),
    (S.DRAFT, S.SENT, L, "Only the practice can move"),
    (S.DISPATCHED, S.RECEIVED, L, "Only the practice can move"),
    (S.RECEIVED, S.FITTED, L, "Only the practice can move"),
    (S.SENT, S.CANCELLED, L, "Only the practice can move"),
    (S.ON_HOLD, S.CANCELLED, L, "Only the practice can move"),
    (S.RESCAN, S.SENT, L, "Only the practice can move"),
    (S.DRAFT, S.DISPATCHED, P, "can't go from Draft to Dispatched. From Draft it can go to: Sent, Cancelled."),
    (S.RECEIVED, S.SENT, P, "can't go from Received to Sent. From Received it can go to: Fitted."),
    (S.RECEIVED, S.DISPATCHED, L, "From Received it can go to: nowhere."),
    (S.IN_PRODUCTION, S.ACKNOWLEDGED, L, "can't go from In production to Acknowledged."),
])
def test_refusals_say_why(world, start, to, side, expected):
    case = factories.case(world, start)
    with pytest.raises(IllegalMove, match=expected.replace(".", r"\.").replace("(", r"\(")):
        lifecycle.move(case, to, actor=_actor(world, side), reason="r")


@pytest.mark.parametrize(("start", "to"), [
    (S.SENT, S.ON_HOLD), (S.IN_PRODUCTION, S.RESCAN), (S.DRAFT, S.CANCELLED), (S.DISPATCHED, S.CANCELLED),
    (S.ON_HOLD, S.RESCAN), (S.RESCAN, S.CANCELLED),
])
def test_hold_rescan_and_cancel_need_a_reason(world, start, to):
    case = factories.case(world, start)
    before, rows = _state(case), _audit_count()
    for reason in ("", "   ", "\n\t"):
        with pytest.raises(IllegalMove, match=f"Moving {case.number} to {to.label} needs a reason."):
            lifecycle.move(case, to, actor=Actor.user(world.users["coordinator"]), reason=reason)
    assert _state(case) == before and _audit_count() == rows


def test_an_unknown_status_is_refused_by_the_service(world):
    case = factories.case(world, S.SENT)
    with pytest.raises(IllegalMove, match="“shipped” is not a status."):
        services.move_case(case, "shipped", Actor.user(world.users["coordinator"]))
    assert case.status is S.SENT


@pytest.mark.parametrize("held_at", [S.SENT, S.ACKNOWLEDGED, S.IN_PRODUCTION])
def test_resume_from_hold_goes_back_to_where_it_was_held_or_forward(world, held_at):
    lab = Actor.lab(world.lab)
    case = factories.case(world, held_at)
    lifecycle.move(case, S.ON_HOLD, actor=lab, reason="waiting for the shade photo")
    assert case.held_from is held_at and case.status_reason == "waiting for the shade photo"

    forward = [S.SENT, S.ACKNOWLEDGED, S.IN_PRODUCTION, S.DISPATCHED]
    allowed = lifecycle.allowed_moves(case, L)
    assert set(allowed) == set(forward[forward.index(held_at):]) | {S.RESCAN}
    assert allowed[held_at].action == "resume"
    for earlier in forward[:forward.index(held_at)] + [S.DRAFT, S.RECEIVED, S.FITTED]:
        with pytest.raises(IllegalMove):
            lifecycle.move(case, earlier, actor=lab)

    lifecycle.move(case, held_at, actor=lab)
    assert case.status is held_at and case.held_from is None and case.status_reason == ""
    row = db.session.scalar(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))
    assert row.action == "case.resume"


def test_resume_forward_from_hold_skips_ahead(world):
    case = factories.case(world, S.ACKNOWLEDGED)
    lab = Actor.lab(world.lab)
    lifecycle.move(case, S.ON_HOLD, actor=lab, reason="query on margin")
    lifecycle.move(case, S.DISPATCHED, actor=lab, detail={"carrier": "UPS", "tracking_number": "1Z999"})
    assert case.status is S.DISPATCHED and case.held_from is None
    assert (case.carrier, case.tracking_number) == ("UPS", "1Z999")
    assert case.dispatched_at is not None


def test_a_hold_without_a_remembered_origin_resumes_to_sent(world):
    case = factories.case(world, S.ON_HOLD)
    case.held_from = None
    db.session.commit()
    assert lifecycle.allowed_moves(case, L)[S.SENT].action == "resume"


def test_rescan_from_hold_forgets_the_hold(world):
    case = factories.case(world, S.IN_PRODUCTION)
    lab = Actor.lab(world.lab)
    lifecycle.move(case, S.ON_HOLD, actor=lab, reason="query")
    lifecycle.move(case, S.RESCAN, actor=lab, reason="the scan is distorted")
    assert case.held_from is None and case.status_reason == "the scan is distorted"
    lifecycle.move(case, S.SENT, actor=Actor.user(world.users["coordinator"]))
    assert case.status_reason == ""


@pytest.mark.parametrize("to", [S.RECEIVED, S.FITTED, S.CANCELLED, S.SENT, S.DRAFT])
def test_the_lab_side_never_receives_fits_cancels_or_sends(world, to):
    start = {S.RECEIVED: S.DISPATCHED, S.FITTED: S.RECEIVED, S.CANCELLED: S.IN_PRODUCTION,
             S.SENT: S.DRAFT, S.DRAFT: S.RESCAN}[to]
    case = factories.case(world, start)
    assert to not in lifecycle.allowed_moves(case, L)
    assert to in lifecycle.allowed_moves(case, P)
    with pytest.raises(IllegalMove, match="Only the practice can move"):
        lifecycle.move(case, to, actor=Actor.lab(world.lab), reason="lab wants to")


@pytest.mark.parametrize("actor_kind", ["job", "system"])
def test_jobs_and_the_system_act_for_the_practice(world, actor_kind):
    actor = Actor.job("jobs.test") if actor_kind == "job" else Actor.system("test")
    case = factories.case(world, S.DISPATCHED)
    lifecycle.move(case, S.RECEIVED, actor=actor)
    assert case.status is S.RECEIVED


@pytest.mark.parametrize("terminal", [S.FITTED, S.CANCELLED])
def test_terminal_states_allow_nothing(world, terminal):
    case = factories.case(world, terminal)
    assert case.closed_at is not None
    assert lifecycle.allowed_moves(case, P) == {} and lifecycle.allowed_moves(case, L) == {}
    for to in Status:
        if to is terminal:
            continue
        with pytest.raises(IllegalMove, match="a closed case can't move"):
            lifecycle.move(case, to, actor=Actor.user(world.users["admin"]), reason="undo")


def test_each_step_sets_its_timestamp(world):
    user = Actor.user(world.users["coordinator"])
    case = factories.case(world, S.DRAFT)
    t = [dt.datetime(2031, 3, d, 9, 30) for d in range(1, 8)]
    lifecycle.move(case, S.SENT, actor=user, now=t[0])
    lifecycle.move(case, S.ACKNOWLEDGED, actor=Actor.lab(world.lab), now=t[1])
    lifecycle.move(case, S.DISPATCHED, actor=Actor.lab(world.lab), now=t[2],
                   detail={"eta": "2031-03-05", "carrier": "DHL", "tracking_number": "JD0001"})
    lifecycle.move(case, S.RECEIVED, actor=user, now=t[3])
    assert case.closed_at is None
    lifecycle.move(case, S.FITTED, actor=user, now=t[4])
    db.session.commit()
    db.session.expire_all()
    case = db.session.get(LabCase, case.id)
    assert (case.sent_at, case.dispatched_at, case.received_at, case.fitted_at, case.closed_at) == (
        t[0], t[2], t[3], t[4], t[4])
    assert case.updated_at == t[4]
    assert case.lab_eta == dt.date(2031, 3, 5) and case.carrier == "DHL" and case.tracking_number == "JD0001"


def test_cancel_sets_closed_at_and_keeps_the_reason(world):
    case = factories.case(world, S.SENT)
    when = dt.datetime(2031, 4, 2, 12, 0)
    lifecycle.move(case, S.CANCELLED, actor=Actor.user(world.users["coordinator"]), reason=" patient moved ",
                   now=when)
    assert case.closed_at == when and case.status_reason == "patient moved"
    assert case.fitted_at is None


def test_a_resend_after_rescan_restamps_sent_at(world):
    user = Actor.user(world.users["coordinator"])
    case = factories.case(world, S.RESCAN)
    first = case.sent_at
    later = first + dt.timedelta(days=3)
    lifecycle.move(case, S.SENT, actor=user, now=later)
    assert case.sent_at == later


def test_move_accepts_a_status_value_string(world):
    case = factories.case(world, S.SENT)
    lifecycle.move(case, "acknowledged", actor=Actor.lab(world.lab))
    assert case.status is S.ACKNOWLEDGED


# -- remakes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("start", [S.DISPATCHED, S.RECEIVED, S.FITTED])
@pytest.mark.parametrize(("payer", "fee"), [("lab", Decimal("0")), ("practice", Decimal("200"))])
def test_remake_from_returned_work_is_a_linked_draft(world, start, payer, fee):
    case = factories.case(world, start)
    case.fee = Decimal("200")
    db.session.commit()
    rows = _audit_count()

    new = services.remake(case, Actor.user(world.users["coordinator"]), "shade", payer, "too light")
    db.session.commit()

    assert new.id != case.id and new.status is S.DRAFT and new.remake_of_id == case.id
    assert (new.remake_reason, new.remake_payer) == ("shade", payer)
    assert new.fee == fee
    assert (new.patient_id, new.lab_id, new.provider_id) == (case.patient_id, case.lab_id, case.provider_id)
    assert [(i.teeth, i.restoration, i.shade) for i in new.items] == [(i.teeth, i.restoration, i.shade)
                                                                       for i in case.items]
    assert f"REMAKE of {case.number}" in new.instructions and "too light" in new.instructions
    assert case.status is start  # the original stays where it was
    actions = db.session.execute(
        select(AuditEvent.action, AuditEvent.entity_id).where(AuditEvent.seq > rows).order_by(AuditEvent.seq)
    ).all()
    assert [tuple(r) for r in actions] == [("case.remake", str(new.id)), ("case.remade", str(case.id))]
    assert list(verify_chain()) == []


@pytest.mark.parametrize("start", [S.DRAFT, S.SENT, S.ACKNOWLEDGED, S.IN_PRODUCTION, S.ON_HOLD, S.RESCAN,
                                   S.CANCELLED])
def test_remake_only_for_work_that_came_back(world, start):
    case = factories.case(world, start)
    cases, rows = db.session.scalar(select(func.count()).select_from(LabCase)), _audit_count()
    with pytest.raises(IllegalMove, match=f"A remake is for work that came back; {case.number} is"):
        services.remake(case, Actor.user(world.users["coordinator"]), "fit", "lab", "rocks")
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(LabCase)) == cases
    assert _audit_count() == rows


def test_remake_route_refuses_an_unknown_payer_or_reason_and_writes_nothing(client, login, world):
    case = factories.case(world, S.RECEIVED)
    login()
    rows = _audit_count()
    for data in ({"reason": "fit", "payer": "insurance", "notes": "x"},
                 {"reason": "whim", "payer": "lab", "notes": "x"},
                 {"reason": "fit", "payer": "lab", "notes": ""}):
        response = client.post(f"/cases/{case.id}/remake", data)
        assert response.status_code in (303, 422), response.status_code
    assert db.session.scalar(select(func.count()).select_from(LabCase)) == 1
    assert _audit_count() == rows

    response = client.post(f"/cases/{case.id}/remake", {"reason": "fit", "payer": "lab", "notes": "rocks"})
    assert response.status_code == 303
    new = db.session.scalar(select(LabCase).where(LabCase.remake_of_id == case.id))
    assert new is not None and (new.remake_reason, new.remake_payer) == ("fit", "lab")
