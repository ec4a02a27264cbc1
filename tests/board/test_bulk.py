"""Bulk actions on the board's selected cards: each case through the same path as one card (the
lifecycle, Approve and send, the case form's edit), one audit row per case, the refused ones
named with the reason and left as they were."""
import html
import json
import re

from sqlalchemy import func, select

from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.cases.services import compute_due_date
from portal.extensions import db as _db
from tests import factories


def _rows(case_id, action=None) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(AuditEvent.entity_type == "lab_case", AuditEvent.entity_id == str(case_id))
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    return _db.session.scalars(stmt).all()


def _all_rows() -> int:
    return _db.session.scalar(select(func.count()).select_from(AuditEvent))


def _fresh(case_id) -> LabCase:
    _db.session.expire_all()
    return _db.session.get(LabCase, case_id)


def bulk(client, data, query=""):
    return client.post(f"/board/bulk{query}", data, htmx="board-columns")


def test_move_the_selected_cases_each_through_the_lifecycle(client, login, world):
    a, b = factories.case(world, Status.SENT), factories.case(world, Status.SENT)
    draft = factories.case(world, Status.DRAFT)
    login()
    before = _all_rows()
    r = bulk(client, {"action": "move", "status": "acknowledged", "case": [a.id, b.id, draft.id]})
    assert r.status_code == 200
    body = html.unescape(r.get_data(as_text=True))
    assert _fresh(a.id).status is Status.ACKNOWLEDGED and _fresh(b.id).status is Status.ACKNOWLEDGED
    assert _fresh(draft.id).status is Status.DRAFT
    for c in (a, b):
        (row,) = _rows(c.id, "case.acknowledge")
        assert row.actor_id == str(world.users["coordinator"].id) and row.on_behalf_of == f"lab:{c.lab_id}"
    assert _all_rows() == before + 2  # one row per moved case, none for the refused one
    assert "2 cases moved to Acknowledged." in body
    assert f"{draft.number} can't go from Draft to Acknowledged" in body
    assert f'data-bulk-done="{draft.id}"' in body  # the refused card stays selected
    card = body.split(f'data-case-number="{draft.number}"', 1)[1].split("</li>", 1)[0]
    assert 'class="refused-why"' in card and "can't go from Draft to Acknowledged" in card


def test_a_move_that_needs_a_reason_takes_the_bars_reason(client, login, world):
    a, b = factories.case(world, Status.SENT), factories.case(world, Status.IN_PRODUCTION)
    login()
    r = bulk(client, {"action": "move", "status": "on_hold", "case": [a.id, b.id]})
    assert "needs a reason" in html.unescape(r.get_data(as_text=True))
    assert _fresh(a.id).status is Status.SENT and _fresh(b.id).status is Status.IN_PRODUCTION
    r = bulk(client, {"action": "move", "status": "on_hold", "reason": "Shade photo missing", "case": [a.id, b.id]})
    assert r.status_code == 200
    for c, was in ((a, Status.SENT), (b, Status.IN_PRODUCTION)):
        fresh = _fresh(c.id)
        assert fresh.status is Status.ON_HOLD and fresh.status_reason == "Shade photo missing" and fresh.held_from is was
        assert len(_rows(c.id, "case.hold")) == 1


def test_cancel_needs_a_reason_and_then_cancels_each(client, login, world):
    a, b = factories.case(world, Status.DRAFT), factories.case(world, Status.SENT)
    fitted = factories.case(world, Status.FITTED)
    login()
    before = _all_rows()
    r = bulk(client, {"action": "cancel", "case": [a.id, b.id]})
    assert r.status_code == 422 and "needs a reason" in r.get_data(as_text=True)
    assert _all_rows() == before and _fresh(a.id).status is Status.DRAFT
    r = bulk(client, {"action": "cancel", "reason": "Patient moved away", "case": [a.id, b.id, fitted.id]})
    body = html.unescape(r.get_data(as_text=True))
    for c in (a, b):
        assert _fresh(c.id).status is Status.CANCELLED and _fresh(c.id).status_reason == "Patient moved away"
        assert len(_rows(c.id, "case.cancel")) == 1
    assert _fresh(fitted.id).status is Status.FITTED and f"{fitted.number} is Fitted" in body


def test_assign_a_lab_to_drafts_with_the_due_date_from_its_turnaround(client, login, world):
    drafts = [factories.case(world, Status.DRAFT, lab=world.labs["manual"]) for _ in range(2)]
    for d in drafts:
        d.lab_id, d.due_date = None, None
    sent = factories.case(world, Status.SENT)
    _db.session.commit()
    lab = world.labs["api"]
    login()
    r = bulk(client, {"action": "assign_lab", "lab": lab.id, "case": [d.id for d in drafts] + [sent.id]})
    body = html.unescape(r.get_data(as_text=True))
    assert r.status_code == 200 and f"2 cases now with {lab.name}." in body
    for d in drafts:
        fresh = _fresh(d.id)
        assert fresh.lab_id == lab.id
        assert fresh.due_date == compute_due_date(fresh.practice_id, lab, fresh.items)
        (row,) = _rows(d.id, "case.update")
        assert json.loads(row.after)["lab_id"] == lab.id and json.loads(row.before)["lab_id"] is None
    assert _fresh(sent.id).lab_id == world.lab.id
    assert f"{sent.number} is Sent: only a draft's lab can be chosen here" in body


def test_a_lab_of_another_organisation_or_a_case_of_another_practice_changes_nothing(client, login, world):
    from portal.practices.models import Organization

    org = Organization(name="Elsewhere")
    _db.session.add(org)
    _db.session.flush()
    foreign_lab = factories.lab(org)
    mine = factories.case(world, Status.DRAFT)
    theirs = factories.case(world, Status.SENT, practice=world.other_practice)
    _db.session.commit()
    login()
    before = _all_rows()
    r = bulk(client, {"action": "assign_lab", "lab": foreign_lab.id, "case": [mine.id]})
    assert r.status_code == 422 and "Choose one of your labs." in r.get_data(as_text=True)
    r = bulk(client, {"action": "move", "status": "acknowledged", "case": [theirs.id]})
    assert r.status_code == 404
    assert _all_rows() == before and _fresh(theirs.id).status is Status.SENT


def test_nothing_selected_or_no_action_says_so(client, login, world):
    login()
    r = bulk(client, {"action": "move", "status": "sent"})
    assert r.status_code == 422 and "Select one or more cases first" in r.get_data(as_text=True)
    r = bulk(client, {"case": [factories.case(world).id]})
    assert r.status_code == 422 and "Choose what to do" in r.get_data(as_text=True)


def test_managers_cannot_act_in_bulk(client, login, world):
    case = factories.case(world, Status.SENT)
    login("manager")
    assert bulk(client, {"action": "move", "status": "acknowledged", "case": [case.id]}).status_code == 403
    assert _fresh(case.id).status is Status.SENT


def test_the_answer_keeps_the_boards_filters(client, login, world):
    a = factories.case(world, Status.SENT, patient_obj=factories.patient(world.practice, "Zed", "Quartz"))
    other = factories.case(world, Status.SENT)
    login()
    body = bulk(client, {"action": "move", "status": "acknowledged", "case": [a.id]}, "?q=quartz").get_data(as_text=True)
    assert a.number in body and other.number not in body
    assert re.search(r'<div id="board-columns"', body)
