"""An Rx from the case page to iTero (Scan Request), withdrawing it (Delete Rx, 409 once scanned),
and asking iTero for a rescan (Return to doctor), over HTTP against the sandbox: the click writes
the row and its audit row, the job calls iTero after the commit, the scan comes back to the case."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases import lifecycle
from portal.cases.lifecycle import Status
from portal.extensions import db
from portal.integrations.itero import rx
from portal.integrations.itero.models import RescanRequest, RescanState, RxState, ScanRequest
from portal.practices.models import utcnow
from portal.scans.models import Scan
from tests import factories
from tests.integrations.itero_support import (
    connect,
    delivered,
    new_integration,
    patient_body,
    run_jobs,
)


@pytest.fixture()
def itero(world, sandbox, live):
    integration = new_integration(world, sandbox)
    connect(integration)
    return integration


@pytest.fixture()
def chen(world):
    provider = factories.provider(world.practice, "Dr. Maya Chen")
    db.session.commit()
    return provider


def draft(world, provider, **kw):
    case = factories.case(world, teeth=["11", "12"], due=dt.date(2027, 1, 15), **kw)
    case.provider_id = provider.id
    case.instructions = "Match the neighbours."
    db.session.commit()
    return case


def sent(case, world) -> None:
    """The coordinator approved the case and sent it to the lab."""
    lifecycle.move(case, Status.SENT, actor=Actor.user(world.users["coordinator"]))
    db.session.commit()


def page(client, case) -> str:
    return client.get(f"/cases/{case.id}").get_data(as_text=True)


def requests_of(case) -> list[ScanRequest]:
    db.session.expire_all()
    return rx.requests_of(case.id)


def actions(case) -> list[tuple[str, str]]:
    rows = db.session.scalars(select(AuditEvent).where(AuditEvent.entity_type == "lab_case",
                                                       AuditEvent.entity_id == str(case.id),
                                                       AuditEvent.action.like("scanner.%")).order_by(AuditEvent.seq))
    return [(r.action, r.actor_type) for r in rows]


def test_send_rx_creates_it_at_itero_and_the_scan_comes_back_to_this_case(itero, chen, world, client, login,
                                                                         sandbox, queue):
    login("coordinator")
    case = draft(world, chen)
    other = factories.case(world, patient_obj=case.patient)  # a second draft: the Rx decides, not a guess
    assert "Send Rx to iTero" in page(client, case)

    answer = client.post(f"/cases/{case.id}/itero/rx")

    assert answer.status_code == 303
    [request] = requests_of(case)
    assert request.state is RxState.PENDING and request.requested_by_id == world.users["coordinator"].id
    assert [name for name, _ in run_jobs(queue)] == ["jobs.itero.send_rx"]
    [request] = requests_of(case)
    assert request.state is RxState.CREATED and request.rx_id
    sent = sandbox.requests("itero.scan_request")[0]["body"]
    patient = case.patient
    assert sent == {"patient": {"first_name": patient.first_name, "last_name": patient.last_name,
                                "chart_number": patient.chart_number, "date_of_birth": "1980-05-17"},
                    "doctor_id": "DR-1001", "procedure": "Crown", "teeth": ["11", "12"], "due_date": "2027-01-15",
                    "notes": "Match the neighbours.", "lab_name": "Email Lab"}
    assert request.rx_id in {r["rx_id"] for r in sandbox.itero.snapshot()["rx"]}
    assert actions(case) == [("scanner.rx_requested", "user"), ("scanner.rx_sent", "job")]
    html = page(client, case)
    assert "Waiting for the scan" in html and "Withdraw Rx" in html and "Send Rx to iTero" not in html

    sandbox.scan_rx(request.rx_id)  # the patient is scanned chairside for this Rx
    assert delivered(sandbox, 1)[0]["status"] == 204
    run_jobs(queue)

    scan = db.session.scalar(select(Scan))
    assert scan.case_id == case.id and scan.rx_id == request.rx_id and other.id != case.id
    assert requests_of(case)[0].state is RxState.SCANNED
    assert "Withdraw Rx" not in page(client, case)


def test_withdraw_rx_deletes_it_at_itero(itero, chen, world, client, login, sandbox, queue):
    login("coordinator")
    case = draft(world, chen)
    client.post(f"/cases/{case.id}/itero/rx")
    run_jobs(queue)
    [request] = requests_of(case)

    assert client.post(f"/scan-requests/{request.id}/withdraw").status_code == 303
    assert requests_of(case)[0].state is RxState.DELETE_PENDING
    run_jobs(queue)

    assert requests_of(case)[0].state is RxState.DELETED
    assert sandbox.requests("itero.delete_rx")[0]["method"] == "DELETE"
    assert request.rx_id not in {r["rx_id"] for r in sandbox.itero.snapshot()["rx"]}
    assert actions(case)[-2:] == [("scanner.rx_withdraw_requested", "user"), ("scanner.rx_withdrawn", "job")]
    assert "Send Rx to iTero" in page(client, case)  # it can be sent again


def test_an_rx_with_a_scan_cannot_be_withdrawn_and_says_so(itero, chen, world, client, login, sandbox, queue):
    login("coordinator")
    case = draft(world, chen)
    client.post(f"/cases/{case.id}/itero/rx")
    run_jobs(queue)
    [request] = requests_of(case)
    sandbox.configure(callbacks=False)  # we have not heard of the scan yet
    sandbox.scan_rx(request.rx_id)

    client.post(f"/scan-requests/{request.id}/withdraw")
    run_jobs(queue)

    [request] = requests_of(case)
    assert request.state is RxState.CREATED
    assert "iTero has a scan for this Rx already, so it can't be withdrawn" in request.last_error
    assert "can&#39;t be withdrawn" in page(client, case)
    assert sandbox.requests("itero.delete_rx")[0]["status"] == 409
    assert actions(case)[-1] == ("scanner.rx_withdraw_refused", "job")


def test_a_provider_iTero_does_not_know_is_a_clear_problem_before_and_after(itero, world, client, login,
                                                                            sandbox, queue):
    login("coordinator")
    stranger = factories.provider(world.practice, "Dr. Who")
    case = draft(world, stranger)

    assert "iTero knows no doctor called “Dr. Who”" in page(client, case)
    answer = client.post(f"/cases/{case.id}/itero/rx", follow_redirects=True)
    assert "its doctors: Dr. Maya Chen, Dr. Tom Okafor" in answer.get_data(as_text=True)
    assert requests_of(case) == []

    itero.set_config(doctors=None)  # nothing known here: the job asks iTero and finds no such doctor
    db.session.commit()
    client.post(f"/cases/{case.id}/itero/rx")
    run_jobs(queue)

    [request] = requests_of(case)
    assert request.state is RxState.FAILED and "iTero knows no doctor called “Dr. Who”" in request.last_error
    assert "itero.scan_request" not in sandbox.counters
    assert actions(case)[-1] == ("scanner.rx_failed", "job")


def test_a_transient_error_keeps_the_rx_for_the_sweep(itero, chen, world, client, login, sandbox, queue):
    login("coordinator")
    case = draft(world, chen)
    sandbox.fault("itero.scan_request", 500)
    client.post(f"/cases/{case.id}/itero/rx")
    run_jobs(queue)

    [request] = requests_of(case)
    assert request.state is RxState.PENDING and "HTTP 500" in request.last_error and request.attempts == 1
    assert rx.sweep() == {"requests": 0}  # its attempt is too recent
    request.updated_at = utcnow() - dt.timedelta(minutes=10)
    db.session.commit()
    assert rx.sweep() == {"requests": 1}
    run_jobs(queue)

    [request] = requests_of(case)
    assert request.state is RxState.CREATED and request.attempts == 2 and request.last_error == ""
    assert len(sandbox.itero.snapshot()["rx"]) == 1


def test_ask_for_a_rescan_returns_the_scan_to_the_doctor_and_the_rescan_joins_the_case(
        itero, world, client, login, sandbox, queue):
    login("coordinator")
    patient = factories.patient(world.practice)
    db.session.commit()
    order = sandbox.add_itero_order(patient=patient_body(patient))
    delivered(sandbox, 1)
    run_jobs(queue)
    case = db.session.scalar(select(Scan)).case
    sent(case, world)
    client.post(f"/cases/{case.id}/move", {"status": "rescan", "reason": "Margin on 36 not captured"})
    db.session.refresh(case)
    assert case.status is Status.RESCAN
    html = page(client, case)
    assert "Ask for a rescan in iTero" in html and 'value="Margin on 36 not captured"' in html

    assert client.post(f"/cases/{case.id}/itero/rescan", {"reason": "Margin on 36 not captured"}).status_code == 303
    run_jobs(queue)

    [asked] = db.session.scalars(select(RescanRequest)).all()
    assert asked.state is RescanState.SENT and asked.order_id == order["order_id"]
    at_itero = next(o for o in sandbox.itero.snapshot()["orders"] if o["order_id"] == order["order_id"])
    assert at_itero["status"] == "Scanning" and at_itero["returns"] == ["Margin on 36 not captured"]
    assert actions(case) == [("scanner.return_to_doctor_requested", "user"), ("scanner.returned_to_doctor", "job")]
    assert "Ask for a rescan in iTero" not in page(client, case)

    sandbox.move_itero_order(order["order_id"], "ready")  # the doctor rescans
    delivered(sandbox, 2)
    run_jobs(queue)

    db.session.refresh(case)
    assert case.status is Status.DRAFT
    assert all("_scan2_" in f.file_name for f in db.session.scalar(select(Scan)).current_files)


def test_itero_refusing_the_return_is_shown_on_the_case(itero, world, client, login, sandbox, queue):
    login("coordinator")
    patient = factories.patient(world.practice)
    db.session.commit()
    order = sandbox.add_itero_order(patient=patient_body(patient))
    delivered(sandbox, 1)
    run_jobs(queue)
    case = db.session.scalar(select(Scan)).case
    sent(case, world)
    client.post(f"/cases/{case.id}/move", {"status": "rescan", "reason": "Bite missing"})
    sandbox.move_itero_order(order["order_id"], "milling")  # iTero has moved on meanwhile

    client.post(f"/cases/{case.id}/itero/rescan", {"reason": "Bite missing"})
    run_jobs(queue)

    [asked] = db.session.scalars(select(RescanRequest)).all()
    assert asked.state is RescanState.FAILED and "HTTP 409" in asked.last_error
    assert "only a scan at the lab can be sent back" in page(client, case)
    assert actions(case)[-1] == ("scanner.return_to_doctor_failed", "job")


def test_bad_requests_change_nothing(itero, chen, world, client, login, sandbox, queue):
    login("coordinator")
    case = draft(world, chen)
    assert "Ask for a rescan in iTero" not in page(client, case)

    refused = client.post(f"/cases/{case.id}/itero/rescan", {"reason": "x"}, follow_redirects=True)
    assert "is Draft; return it for a rescan first" in refused.get_data(as_text=True)
    client.post(f"/cases/{case.id}/itero/rx")
    twice = client.post(f"/cases/{case.id}/itero/rx", follow_redirects=True)
    assert "already at iTero" in twice.get_data(as_text=True)
    assert len(requests_of(case)) == 1
    early = client.post(f"/scan-requests/{requests_of(case)[0].id}/withdraw", follow_redirects=True)
    assert "still being sent to iTero" in early.get_data(as_text=True)
    assert client.post(f"/cases/{case.id}/itero/rx", csrf=False).status_code == 400  # docs/reliability.md F1
    assert len(requests_of(case)) == 1


def test_roles_and_other_practices(itero, chen, world, client, login, queue):
    case = draft(world, chen)
    login("manager")
    assert "Send Rx to iTero" not in page(client, case)
    assert client.post(f"/cases/{case.id}/itero/rx").status_code == 403
    login("coordinator")
    client.post(f"/cases/{case.id}/itero/rx")
    [request] = requests_of(case)
    login("outsider")
    assert client.post(f"/scan-requests/{request.id}/withdraw").status_code == 404  # docs/reliability.md F6
    assert client.post(f"/cases/{case.id}/itero/rx").status_code == 404
    assert requests_of(case)[0].state is RxState.PENDING


def test_without_a_connected_integration_there_is_no_panel(world, chen, client, login):
    login("coordinator")
    case = draft(world, chen)

    assert 'id="itero-panel"' not in page(client, case)
    answer = client.post(f"/cases/{case.id}/itero/rx", follow_redirects=True)
    assert "no connected iTero integration" in answer.get_data(as_text=True)
    assert requests_of(case) == []
