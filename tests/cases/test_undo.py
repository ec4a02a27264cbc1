"""Undo for a move made by mistake: within lifecycle.UNDO_SECONDS, by the person who made it,
while nothing else changed the case, never a send or a cancellation; through the lifecycle,
putting back what the move overwrote, audited as case.undo."""
import datetime as dt
import json

import pytest
from sqlalchemy import select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases import lifecycle, services
from portal.cases.lifecycle import IllegalMove, Status
from portal.cases.models import LabCase
from portal.extensions import db as _db
from tests import factories


def _last(case) -> AuditEvent:
    return services.latest_event(case)


def _fresh(case_id) -> LabCase:
    _db.session.expire_all()
    return _db.session.get(LabCase, case_id)


def test_undo_puts_a_dispatch_back_with_its_time_stamp_and_shipment(world):
    case = factories.case(world, Status.IN_PRODUCTION)
    me = Actor.user(world.users["coordinator"])
    lifecycle.move(case, Status.DISPATCHED, actor=me, detail={"carrier": "UPS", "tracking_number": "1Z9", "eta": "2031-01-05"})
    _db.session.commit()
    assert case.dispatched_at is not None and case.tracking_number == "1Z9"
    services.undo_move(case, _last(case).seq, me)
    _db.session.commit()
    case = _fresh(case.id)
    assert case.status is Status.IN_PRODUCTION and case.dispatched_at is None
    assert (case.carrier, case.tracking_number, case.lab_eta) == ("", "", None)
    row = _last(case)
    assert row.action == "case.undo" and json.loads(row.after)["status"] == "in_production"
    assert json.loads(row.after)["undone"] == "case.dispatch"


def test_undo_of_a_hold_and_of_a_resume_restores_where_it_was_held_from(world):
    me = Actor.user(world.users["coordinator"])
    case = factories.case(world, Status.ACKNOWLEDGED)
    lifecycle.move(case, Status.ON_HOLD, actor=me, reason="Shade?")
    _db.session.commit()
    services.undo_move(case, _last(case).seq, me)
    _db.session.commit()
    case = _fresh(case.id)
    assert (case.status, case.status_reason, case.held_from) == (Status.ACKNOWLEDGED, "", None)
    lifecycle.move(case, Status.ON_HOLD, actor=me, reason="Shade?")
    lifecycle.move(case, Status.ACKNOWLEDGED, actor=me)  # resume
    _db.session.commit()
    services.undo_move(case, _last(case).seq, me)
    _db.session.commit()
    case = _fresh(case.id)
    assert (case.status, case.status_reason, case.held_from) == (Status.ON_HOLD, "Shade?", Status.ACKNOWLEDGED)


def test_undo_is_refused_late_by_someone_else_after_another_change_or_for_a_cancel(world):
    me, other = Actor.user(world.users["coordinator"]), Actor.user(world.users["admin"])
    case = factories.case(world, Status.SENT)
    lifecycle.move(case, Status.ACKNOWLEDGED, actor=me)
    _db.session.commit()
    seq = _last(case).seq
    with pytest.raises(IllegalMove, match="can't be undone"):
        services.undo_move(case, seq, other)
    late = utcnow_plus(lifecycle.UNDO_SECONDS + 1)
    with pytest.raises(IllegalMove, match="can't be undone"):
        lifecycle.undo(case, _last(case), actor=me, latest_seq=seq, now=late)
    lifecycle.move(case, Status.IN_PRODUCTION, actor=me)
    _db.session.commit()
    with pytest.raises(IllegalMove, match="has changed since"):
        services.undo_move(case, seq, me)
    assert _fresh(case.id).status is Status.IN_PRODUCTION
    draft = factories.case(world, Status.DRAFT)
    services.move_case(draft, "cancelled", me, reason="Duplicate")
    _db.session.commit()
    with pytest.raises(IllegalMove, match="not for a send or a cancellation"):
        services.undo_move(draft, _last(draft).seq, me)
    rows = _db.session.scalars(select(AuditEvent).where(AuditEvent.action == "case.undo")).all()
    assert rows == []


def utcnow_plus(seconds):
    from portal.clock import utcnow

    return utcnow() + dt.timedelta(seconds=seconds)


def test_the_board_offers_undo_after_a_move_and_the_undo_answers_the_board(client, login, world):
    case = factories.case(world, Status.SENT)
    login()
    body = client.post(f"/cases/{case.id}/move", {"status": "acknowledged"}, htmx="board-columns").get_data(as_text=True)
    seq = _last(case).seq
    assert f'action="/cases/{case.id}/undo"' in body and f'name="event" value="{seq}"' in body
    r = client.post(f"/cases/{case.id}/undo", {"event": seq}, htmx="board-columns")
    assert r.status_code == 200 and "is back in Sent" in r.get_data(as_text=True)
    assert _fresh(case.id).status is Status.SENT
    again = client.post(f"/cases/{case.id}/undo", {"event": seq}, htmx="board-columns")
    assert again.status_code == 409 and _fresh(case.id).status is Status.SENT
