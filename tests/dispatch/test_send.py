"""Approve and send: the prescription check, the dispatch row, the move, and the board's drag."""
import datetime as dt
import json

from sqlalchemy import func, select

from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.cases.models import CaseItem, LabCase
from portal.dispatch.models import Dispatch, DispatchState
from portal.dispatch.validation import check_case
from portal.extensions import db
from tests import factories


def _count(model):
    return db.session.scalar(select(func.count()).select_from(model))


def _due():
    """A weekday a fortnight out: far from any seat appointment the tests book."""
    day = dt.date.today() + dt.timedelta(days=14)
    while day.weekday() > 4:
        day += dt.timedelta(days=1)
    return day


def test_send_page_lists_problems_beside_fields_and_is_422(client, login, world):
    case = factories.case(world, lab=world.labs["api"], due=_due())
    item = case.items[0]
    item.material, item.shade, item.margin = "PMMA", "", ""
    case.provider_id = None
    db.session.commit()
    login()
    response = client.get(f"/cases/{case.id}/send")
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "Api Lab does not make PMMA crowns" in html
    assert "The lab needs the shade for a crown." in html and "The lab needs the margin for a crown." in html
    assert "Choose the prescribing provider." in html
    assert f'href="/cases/{case.id}/edit"' in html and "Approve and send to" not in html
    partial = client.hx(f"/cases/{case.id}/send", target="send-check")
    assert partial.status_code == 422 and "<html" not in partial.get_data(as_text=True)
    # Posting anyway changes nothing.
    assert client.post(f"/cases/{case.id}/send").status_code == 422
    db.session.expire_all()
    assert case.status is Status.DRAFT and _count(Dispatch) == 0


def test_lab_offer_and_restoration_rules(world):
    case = factories.case(world, lab=world.labs["email"], due=_due(), restoration="bridge", teeth=["11"])
    case.items.append(CaseItem(position=1, teeth="", restoration="veneer", material="zirconia", shade="A1",
                               margin="chamfer"))
    db.session.flush()
    messages = [p.message for p in check_case(case).problems]
    assert "A bridge spans at least two teeth." in messages
    assert "Name the teeth for the veneer." in messages
    assert "Email Lab does not make veneers." in messages
    case.items[0].material = "PFM"
    messages = [p.message for p in check_case(case).problems]
    assert any(m.startswith("Email Lab does not make PFM bridges") for m in messages)
    db.session.rollback()


def test_arch_work_needs_no_teeth_shade_or_margin(world):
    case = factories.case(world, lab=world.labs["email"], due=_due(), restoration="night_guard", teeth=[])
    case.items[0].material, case.items[0].shade, case.items[0].margin = "hard acrylic", "", ""
    assert check_case(case).ok


def test_approve_and_send_to_manual_lab_records_approver_and_dispatch(client, login, world):
    case = factories.case(world, lab=world.labs["manual"], due=_due())
    user = login()
    assert client.get(f"/cases/{case.id}/send").status_code == 200
    response = client.post(f"/cases/{case.id}/send")
    assert response.status_code == 303 and response.headers["Location"].endswith(f"/cases/{case.id}")
    db.session.expire_all()
    dispatch = db.session.scalar(select(Dispatch))
    assert case.status is Status.SENT and dispatch.state is DispatchState.DELIVERED
    assert dispatch.approved_by_id == user.id and dispatch.channel.value == "manual"
    row = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "case.send"))
    after = json.loads(row.after)
    assert row.actor_id == str(user.id) and after["dispatch_id"] == dispatch.id and after["channel"] == "manual"
    page = client.get(f"/cases/{case.id}").get_data(as_text=True)
    assert "Delivered" in page and "Approved by" in page


def test_seat_risk_is_a_warning_to_confirm(client, login, world):
    seat = dt.date.today() + dt.timedelta(days=3)
    case = factories.case(world, lab=world.labs["manual"], seat=seat, due=_due())
    login()
    page = client.get(f"/cases/{case.id}/send")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "may come back too late" in html and 'name="confirm_risk"' in html
    unconfirmed = client.post(f"/cases/{case.id}/send", htmx="send-check")
    assert unconfirmed.status_code == 422 and "Tick this" in unconfirmed.get_data(as_text=True)
    db.session.expire_all()
    assert case.status is Status.DRAFT
    assert client.post(f"/cases/{case.id}/send", {"confirm_risk": "y"}).status_code == 303
    db.session.expire_all()
    assert case.status is Status.SENT
    row = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "case.send"))
    assert json.loads(row.after)["risk_confirmed"] == "yes"


def test_board_drag_to_sent_goes_through_approve_and_send(client, login, world, queue):
    good = factories.case(world, lab=world.labs["api"], due=_due())
    bad = factories.case(world, lab=world.labs["api"], due=_due())
    bad.items[0].shade = ""
    db.session.commit()
    login()
    refused = client.post(f"/cases/{bad.id}/move", {"status": "sent"}, htmx="board-columns")
    assert refused.status_code == 409
    assert "can&#39;t be sent yet" in refused.get_data(as_text=True) and "shade" in refused.get_data(as_text=True)
    moved = client.post(f"/cases/{good.id}/move", {"status": "sent"}, htmx="board-columns")
    assert moved.status_code == 200
    db.session.expire_all()
    assert bad.status is Status.DRAFT and good.status is Status.SENT
    dispatch = db.session.scalar(select(Dispatch))
    assert dispatch.case_id == good.id and dispatch.state is DispatchState.PENDING
    # Relayed after the commit: the lab's drain job, which makes the first attempt of each waiting
    # dispatch of the lab (a burst of sends shares it).
    [job] = queue.jobs
    assert job.func_name == "jobs.dispatch.deliver_due" and job.args == (good.lab_id,)
    assert job.id.startswith(f"dispatch-lab-{good.lab_id}-")


def test_resend_after_rescan_supersedes_the_old_dispatch(client, login, world):
    case = factories.case(world, lab=world.labs["manual"], due=_due())
    login()
    client.post(f"/cases/{case.id}/send")
    client.post(f"/cases/{case.id}/move", {"status": "rescan", "reason": "distorted margin"})
    client.post(f"/cases/{case.id}/send")
    db.session.expire_all()
    states = sorted(d.state.value for d in db.session.scalars(select(Dispatch)))
    assert case.status is Status.SENT and states == ["delivered", "superseded"]


def test_email_lab_gets_a_dispatch_and_part_b_link(client, login, world):
    case = factories.case(world, lab=world.labs["email"], due=_due())
    login()
    assert client.post(f"/cases/{case.id}/send").status_code == 303
    db.session.expire_all()
    dispatch = db.session.scalar(select(Dispatch))
    assert case.status is Status.SENT and dispatch.channel.value == "email"


def test_manager_cannot_send_and_other_practice_is_404(client, login, world):
    case = factories.case(world, lab=world.labs["manual"], due=_due())
    other = factories.case(world, practice=world.other_practice, lab=world.labs["manual"], due=_due())
    login("manager")
    assert client.post(f"/cases/{case.id}/send").status_code == 403
    login()
    assert client.get(f"/cases/{other.id}/send").status_code == 404
    assert _count(Dispatch) == 0 and db.session.get(LabCase, case.id).status is Status.DRAFT
