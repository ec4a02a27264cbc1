"""Order events to an API lab (docs/lab-api.md): a cancelled case, a new due date, a changed
prescription or a message reach the lab's API, signed, once, in order, after the work order, with
failures shown and retried. Everything goes over HTTP to the real lab stub; nothing is mocked."""
import datetime as dt
import re

import pytest
from sqlalchemy import select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases import lifecycle
from portal.cases.lifecycle import Status
from portal.cases.services import CaseData, ItemData, move_case, update_case
from portal.dispatch import notices, signing
from portal.dispatch.models import Dispatch, DispatchState, NoticeType, OrderNotice
from portal.extensions import db
from portal.messages.models import LabMessage
from tests import factories
from tests.dispatch.conftest import SECRET, drain, run_jobs
from tests.dispatch.test_delivery import _due, _send

EVENT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _delivered(world, lab, queue) -> Dispatch:
    """A case whose work order the lab has taken."""
    dispatch = _send(world, lab)
    drain(queue)
    db.session.refresh(dispatch)
    assert dispatch.state is DispatchState.DELIVERED
    return dispatch


def _actor(world) -> Actor:
    return Actor.user(world.users["coordinator"])


def _notices(case_id: int) -> list[OrderNotice]:
    db.session.expire_all()
    return list(db.session.scalars(select(OrderNotice).where(OrderNotice.case_id == case_id)
                                   .order_by(OrderNotice.id)))


def _actions(notice: OrderNotice) -> list[str]:
    return [r.action for r in db.session.scalars(
        select(AuditEvent).where(AuditEvent.entity_type == "order_notice", AuditEvent.entity_id == str(notice.id))
        .order_by(AuditEvent.seq))]


def _edit(case, world, **changes) -> None:
    """Save the case form with some fields changed, through the same service the edit page uses."""
    item = case.items[0]
    items = changes.pop("items", None) or [ItemData(teeth=item.tooth_list, restoration=item.restoration,
                                                    material=item.material, shade=item.shade,
                                                    margin=item.margin, notes=item.notes)]
    data = CaseData(patient_id=case.patient_id, provider_id=case.provider_id, lab_id=case.lab_id,
                    due_date=changes.pop("due_date", case.due_date), items=items,
                    instructions=changes.pop("instructions", case.instructions))
    assert not changes
    update_case(case, data, _actor(world))
    db.session.commit()


def test_cancelling_sends_the_lab_one_signed_cancelled_event(client, login, world, api_lab, stub, queue):
    dispatch = _delivered(world, api_lab, queue)
    login()
    response = client.post(f"/cases/{dispatch.case_id}/move", {"status": "cancelled", "reason": "Patient moved away"})
    assert response.status_code == 303
    drain(queue)
    [event] = stub.events
    [notice] = _notices(dispatch.case_id)
    headers, body = event["headers"], event["body"]
    signing.verify([SECRET], headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"],
                   event["raw"])
    assert event["order_id"] == dispatch.id and stub.requests[-1]["path"] == f"/orders/{dispatch.id}/events"
    assert headers["webhook-id"] == notice.webhook_id and headers["content-type"] == "application/json"
    assert body["schema"] == "labmanager.order_event/1" and body["type"] == "cancelled"
    assert body["event_id"] == notice.event_id and EVENT_ID.match(body["event_id"])
    assert body["order_id"] == dispatch.id and body["case_number"] == dispatch.case.number
    assert body["data"] == {"reason": "Patient moved away"}
    assert dt.datetime.strptime(body["occurred_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert notice.state is DispatchState.DELIVERED and notice.attempts == 1 and notice.last_status_code == 204
    assert _actions(notice) == ["order_notice.queued", "order_notice.delivered"]


def test_500_500_204_leaves_exactly_one_event_at_the_lab(world, api_lab, stub, queue):
    dispatch = _delivered(world, api_lab, queue)
    stub.script = [(500, "store"), 500]  # the lab saved the event, then fell over; then 204
    move_case(dispatch.case, "cancelled", _actor(world), reason="Treatment postponed")
    db.session.commit()
    drain(queue)
    event_requests = [r for r in stub.requests if r["path"].endswith("/events")]
    assert len(event_requests) == 3 and len(stub.events) == 1
    assert len({r["headers"]["webhook-id"] for r in event_requests}) == 1
    assert len({r["raw"] for r in event_requests}) == 1  # the same event, not rebuilt per attempt
    [notice] = _notices(dispatch.case_id)
    assert notice.state is DispatchState.DELIVERED and notice.attempts == 3
    assert _actions(notice) == ["order_notice.queued", "order_notice.retry_scheduled",
                                "order_notice.retry_scheduled", "order_notice.delivered"]


@pytest.mark.parametrize(("status", "state"), [
    (404, DispatchState.FAILED), (410, DispatchState.FAILED), (400, DispatchState.FAILED),
    (408, DispatchState.PENDING), (409, DispatchState.PENDING), (429, DispatchState.PENDING),
    (503, DispatchState.PENDING),
])
def test_which_answers_are_final(world, api_lab, stub, queue, status, state):
    dispatch = _delivered(world, api_lab, queue)
    stub.script = [status]
    move_case(dispatch.case, "cancelled", _actor(world), reason="No longer needed")
    db.session.commit()
    run_jobs(queue)  # the first attempt only; a retry would wait in the scheduler
    [notice] = _notices(dispatch.case_id)
    assert notice.state is state and notice.last_status_code == status and notice.attempts == 1
    assert ("refused the cancellation" in notice.last_error) == (state is DispatchState.FAILED)


def test_404_fails_for_good_shows_with_retry_and_retry_delivers(client, login, world, api_lab, stub, queue):
    dispatch = _delivered(world, api_lab, queue)
    case_id = dispatch.case_id
    stub.script = [404]
    login()
    client.post(f"/cases/{case_id}/messages", {"text": "Please call about the shade"})
    drain(queue)
    [notice] = _notices(case_id)
    assert notice.state is DispatchState.FAILED and notice.last_status_code == 404
    assert "refused the message (HTTP 404)" in notice.last_error and not stub.events
    assert _actions(notice) == ["order_notice.queued", "order_notice.failed"]
    board = client.get("/").get_data(as_text=True)
    assert "Message not delivered" in board and f"/cases/{case_id}/notices/retry" in board
    page = client.get(f"/cases/{case_id}").get_data(as_text=True)
    assert "Updates to the lab" in page and "Not delivered" in page and "HTTP 404" in page
    assert "“Please call about the shade”" in page  # what the lab was to be told
    assert f"/notices/{notice.id}/retry" in page and "Retry sending the message" in page
    # The card's Retry, back to the board.
    response = client.post(f"/cases/{case_id}/notices/retry", {"next": "/"})
    assert response.status_code == 303 and response.headers["Location"] == "/"
    [notice] = _notices(case_id)
    assert notice.state is DispatchState.PENDING and queue.fetch_job(f"notice-{notice.id}-2") is not None
    drain(queue)
    [notice] = _notices(case_id)
    assert notice.state is DispatchState.DELIVERED and notice.attempts == 2
    [event] = stub.events
    assert event["headers"]["webhook-id"] == notice.webhook_id and event["body"]["data"]["text"] == \
        "Please call about the shade"
    assert _actions(notice)[-2:] == ["order_notice.retry", "order_notice.delivered"]
    assert "Message not delivered" not in client.get("/").get_data(as_text=True)
    # Nothing left to retry; another practice's notice is not found; a manager may not retry.
    assert client.post(f"/notices/{notice.id}/retry").status_code == 303
    assert _notices(case_id)[0].state is DispatchState.DELIVERED
    login("manager")
    assert client.post(f"/notices/{notice.id}/retry").status_code == 403
    login("outsider")
    assert client.post(f"/notices/{notice.id}/retry").status_code == 404
    assert client.post(f"/cases/{case_id}/notices/retry").status_code == 404


def test_a_new_due_date_reaches_the_lab(world, api_lab, stub, queue):
    dispatch = _delivered(world, api_lab, queue)
    case = dispatch.case
    before = case.due_date
    _edit(case, world, due_date=before + dt.timedelta(days=7))
    drain(queue)
    [event] = stub.events
    assert event["body"]["type"] == "due_date_changed"
    assert event["body"]["data"] == {"due_date": (before + dt.timedelta(days=7)).isoformat(),
                                     "previous": before.isoformat()}
    [notice] = _notices(case.id)
    assert notice.summary == f"due {(before + dt.timedelta(days=7)).isoformat()} (was {before.isoformat()})"
    _edit(case, world)  # saving without a change tells the lab nothing
    drain(queue)
    assert len(stub.events) == 1 and len(_notices(case.id)) == 1


def test_a_changed_prescription_reaches_the_lab(world, api_lab, stub, queue):
    dispatch = _delivered(world, api_lab, queue)
    case = dispatch.case
    _edit(case, world, instructions="Match the neighbouring tooth", items=[
        ItemData(teeth=["11", "21"], restoration="crown", material="lithium disilicate", shade="A1",
                 margin="shoulder", notes="incisal translucency")])
    drain(queue)
    [event] = stub.events
    assert event["body"]["type"] == "prescription_changed"
    assert event["body"]["data"] == {
        "items": [{"teeth": ["11", "21"], "restoration": "crown", "material": "lithium disilicate",
                   "shade": "A1", "margin": "shoulder", "notes": "incisal translucency"}],
        "instructions": "Match the neighbouring tooth"}


def test_a_message_reaches_the_lab_and_the_panel_says_so(client, login, world, api_lab, stub, queue):
    dispatch = _delivered(world, api_lab, queue)
    login()
    page = client.get(f"/cases/{dispatch.case_id}").get_data(as_text=True)
    assert f"Through {api_lab.name}'s API, to their system." in page
    response = client.post(f"/cases/{dispatch.case_id}/messages", {"text": "Bite scan follows <b>today</b>"},
                           htmx="lab-messages")
    assert response.status_code == 200 and "Waiting to send" in response.get_data(as_text=True)
    drain(queue)
    [event] = stub.events
    assert event["body"]["type"] == "message"
    assert event["body"]["data"] == {"text": "Bite scan follows <b>today</b>", "author": "coordinator@test.test"}
    message = db.session.scalars(select(LabMessage)).one()
    assert _notices(dispatch.case_id)[0].message_id == message.id
    page = client.get(f"/cases/{dispatch.case_id}").get_data(as_text=True)
    assert "Delivered to the lab&#39;s system" in page and "Bite scan follows &lt;b&gt;today&lt;/b&gt;" in page


def test_nothing_goes_before_the_work_order_and_changes_follow_it(client, login, world, api_lab, stub, queue):
    stub.script = [400]  # the lab refuses the work order
    dispatch = _send(world, api_lab)
    drain(queue)
    case = db.session.get(Dispatch, dispatch.id).case
    _edit(case, world, due_date=case.due_date + dt.timedelta(days=3))
    login()
    client.post(f"/cases/{case.id}/messages", {"text": "Any news?"})
    drain(queue)
    assert not stub.events and [r["path"] for r in stub.requests] == ["/orders"]  # only the refused order
    due, message = _notices(case.id)
    assert due.state is DispatchState.PENDING and due.attempts == 0 and due.waits_for_order
    page = client.get(f"/cases/{case.id}").get_data(as_text=True)
    assert page.count("Waits for the work order") == 3  # two updates, and the message's own line
    assert notices.sweep() == 0  # nothing is due while the order is not with the lab
    # The work order goes after all: the changes follow it, in order, and the order is unchanged.
    client.post(f"/dispatch/{dispatch.id}/retry")
    drain(queue)
    assert [r["path"] for r in stub.requests] == ["/orders", "/orders"] + [f"/orders/{dispatch.id}/events"] * 2
    assert [e["body"]["type"] for e in stub.events] == ["due_date_changed", "message"]
    assert all(n.state is DispatchState.DELIVERED for n in _notices(case.id))


def test_nothing_is_sent_for_a_case_that_never_went_to_the_lab(client, login, world, api_lab, stub, queue):
    draft = factories.case(world, lab=api_lab, due=_due())
    login()
    page = client.get(f"/cases/{draft.id}").get_data(as_text=True)
    assert "only gets messages written after the case is sent" in page
    client.post(f"/cases/{draft.id}/messages", {"text": "Draft note"})
    _edit(draft, world, due_date=draft.due_date + dt.timedelta(days=2))
    move_case(draft, "cancelled", _actor(world), reason="Not needed")
    db.session.commit()
    drain(queue)
    assert not _notices(draft.id) and not stub.requests
    assert "Not sent: written before the case went to the lab" in client.get(f"/cases/{draft.id}").get_data(
        as_text=True)


def test_cancelling_before_the_first_attempt_withdraws_the_work_order(world, api_lab, stub, queue):
    dispatch = _send(world, api_lab)
    queue.empty()  # the work order's job has not run yet (a busy or stopped worker)
    move_case(dispatch.case, "cancelled", _actor(world), reason="Wrong patient")
    db.session.commit()
    db.session.expire_all()
    assert dispatch.state is DispatchState.SUPERSEDED and not _notices(dispatch.case_id)
    from jobs.sweep import run

    assert run()["dispatch"] == 0
    drain(queue)
    assert not stub.requests  # the lab never hears of a case that was cancelled before it went


def test_a_new_work_order_withdraws_the_old_orders_waiting_notices(world, api_lab, stub, queue):
    from portal.dispatch.services import approve_and_send

    stub.script = [400]
    dispatch = _send(world, api_lab)
    drain(queue)
    case = db.session.get(Dispatch, dispatch.id).case
    _edit(case, world, due_date=case.due_date + dt.timedelta(days=1))
    [waiting] = _notices(case.id)
    lifecycle.move(case, Status.RESCAN, actor=_actor(world), reason="Margins unclear")  # recorded from a call
    approve_and_send(case, _actor(world), confirm_risk=True)
    db.session.commit()
    drain(queue)
    [withdrawn] = _notices(case.id)
    assert withdrawn.id == waiting.id and withdrawn.state is DispatchState.SUPERSEDED
    assert _actions(withdrawn) == ["order_notice.queued", "order_notice.superseded"]
    assert not stub.events and len(stub.orders) == 1  # the new order carries the new date itself


def test_the_sweep_delivers_a_notice_whose_job_was_lost(world, api_lab, stub, queue):
    from jobs.sweep import run

    dispatch = _delivered(world, api_lab, queue)
    move_case(dispatch.case, "cancelled", _actor(world), reason="Patient declined")
    db.session.commit()
    queue.empty()  # as if Redis had lost the job
    [notice] = _notices(dispatch.case_id)
    assert run()["notices"] == 1 and queue.fetch_job(f"notice-{notice.id}-1") is not None
    assert run()["notices"] == 1 and queue.count == 1  # the same job id: not queued twice
    drain(queue)
    assert [e["body"]["type"] for e in stub.events] == ["cancelled"]
    assert run()["notices"] == 0


def test_two_notices_of_one_order_arrive_in_order(client, login, world, api_lab, stub, queue):
    dispatch = _delivered(world, api_lab, queue)
    stub.script = [503]  # the first message is turned away once and retried
    login()
    for text in ("first", "second", "third"):
        assert client.post(f"/cases/{dispatch.case_id}/messages", {"text": text}).status_code == 303
    results = run_jobs(queue)  # the three relayed jobs: only the first may go, and is put back
    assert results == ["retry scheduled", "nothing to do", "nothing to do"]
    first, second, third = _notices(dispatch.case_id)
    assert first.state is DispatchState.PENDING and first.attempts == 1
    assert second.attempts == third.attempts == 0 and not stub.events
    assert notices.due_for_sweep(dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=1)) == [first]
    drain(queue)
    assert [e["body"]["data"]["text"] for e in stub.events] == ["first", "second", "third"]
    assert [r["headers"]["webhook-id"] for r in stub.requests[1:]] == [
        first.webhook_id, first.webhook_id, second.webhook_id, third.webhook_id]


def test_a_failed_notice_does_not_hold_back_the_next(world, api_lab, stub, queue):
    dispatch = _delivered(world, api_lab, queue)
    stub.script = [422]
    case = dispatch.case
    _edit(case, world, due_date=case.due_date + dt.timedelta(days=1))
    move_case(case, "cancelled", _actor(world), reason="Patient declined")
    db.session.commit()
    drain(queue)
    due, cancelled = _notices(case.id)
    assert due.state is DispatchState.FAILED and cancelled.state is DispatchState.DELIVERED
    assert [e["body"]["type"] for e in stub.events] == ["cancelled"]


def test_a_job_that_raised_puts_the_notice_back_on_the_retry_path(world, api_lab, stub, queue):
    from jobs.notices import on_failure

    dispatch = _delivered(world, api_lab, queue)
    move_case(dispatch.case, "cancelled", _actor(world), reason="Patient declined")
    db.session.commit()
    [notice] = _notices(dispatch.case_id)
    assert notices.claim(notice.id) is not None  # an attempt started, then the job died with an error
    db.session.commit()
    job = queue.fetch_job(f"notice-{notice.id}-1")  # the relayed job, as RQ hands it to the callback
    on_failure(job, queue.connection, RuntimeError, RuntimeError("database went away"), None)
    [notice] = _notices(dispatch.case_id)
    assert notice.state is DispatchState.PENDING and "database went away" in notice.last_error
    assert _actions(notice)[-1] == "order_notice.retry_scheduled"


def test_email_and_manual_labs_keep_their_ways(client, login, world, queue):
    from portal.mail.models import MailMessage

    login()
    manual = factories.case(world, Status.SENT, lab=world.labs["manual"])
    page = client.get(f"/cases/{manual.id}").get_data(as_text=True)
    assert "Manual lab: tell them by phone" in page and "this note is kept on the case" in page
    client.post(f"/cases/{manual.id}/messages", {"text": "Called about the shade"})
    assert "Not sent: tell the lab by phone" in client.get(f"/cases/{manual.id}").get_data(as_text=True)
    email_case = factories.case(world, Status.SENT, lab=world.labs["email"])
    assert "By email to" in client.get(f"/cases/{email_case.id}").get_data(as_text=True)
    client.post(f"/cases/{email_case.id}/messages", {"text": "Shade A3 please"})
    message = db.session.scalars(select(LabMessage).where(LabMessage.case_id == email_case.id)).one()
    mail = db.session.get(MailMessage, message.mail_id)
    assert mail.kind == "message" and "Shade A3 please" in mail.text_body
    assert "Being emailed" in client.get(f"/cases/{email_case.id}").get_data(as_text=True)
    assert not db.session.scalars(select(OrderNotice)).all()
    assert notices.queue_notice(manual, NoticeType.MESSAGE, {"text": "x"}, _actor(world)) is None


def test_a_lab_reporting_on_its_order_lets_the_waiting_updates_go(client, world, api_lab, stub, queue):
    """The work order failed on our side (a timeout, say) but the lab has it and says so: the
    changes waiting for it follow at once."""
    from tests.dispatch.test_webhook import _event, post

    stub.script = [(500, "store"), 400]  # the lab stored the order; we gave up on it
    dispatch = _send(world, api_lab)
    drain(queue)
    case = db.session.get(Dispatch, dispatch.id).case
    assert dispatch.state is DispatchState.FAILED and len(stub.orders) == 1
    _edit(case, world, due_date=case.due_date + dt.timedelta(days=2))
    drain(queue)
    assert not stub.events
    assert post(client, api_lab.id, _event(dispatch, "acknowledged"), run=False).status_code == 204
    drain(queue)  # applies the lab's event, then delivers what waited for the order
    assert dispatch.state is DispatchState.DELIVERED
    assert [e["body"]["type"] for e in stub.events] == ["due_date_changed"]
