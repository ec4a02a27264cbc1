"""Lab cases back out to Open Dental: the outbox row armed by the case's own change, the job that
writes it (POST, then PUT), a lost answer that must not give two lab cases, refusals on the case."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from portal.audit.actor import Actor
from portal.cases import lifecycle, services as case_services
from portal.cases.status import Status
from portal.dispatch.models import DispatchState
from portal.extensions import db
from portal.integrations import writeback
from portal.integrations.models import PmsLabCase, PmsLaboratory
from portal.integrations.sync import run_sync
from portal.people.models import Patient, Provider
from tests import factories
from tests.integrations.opendental_support import audit_count, od_integration, reload


def setup(world, od):
    od.seed(patients=3, appointments=0, providers=1, laboratories=2)
    i = od_integration(world.practice, od.base_url)
    run_sync(i.id)
    lab_row = db.session.scalar(select(PmsLaboratory).where(PmsLaboratory.ref == "2"))
    lab_row.lab_id = world.lab.id
    patient = db.session.scalar(select(Patient).where(Patient.external_id == "1"))
    case = factories.case(world, Status.DRAFT, patient_obj=patient, due=dt.date.today() + dt.timedelta(days=9))
    case.provider_id = db.session.scalar(select(Provider.id).where(Provider.external_id == "1"))
    db.session.commit()
    return i, case


def actor(world):
    return Actor.user(world.users["coordinator"])


def send(world, case):
    lifecycle.move(case, Status.SENT, actor=actor(world))
    db.session.commit()
    return db.session.scalar(select(PmsLabCase).where(PmsLabCase.case_id == case.id))


def receive(world, case):
    case_services.check_in(case, actor(world), quality_checked=True)
    db.session.commit()


def test_sent_then_received_is_one_lab_case_with_both_dates(world, od, client, login):
    i, case = setup(world, od)
    row = send(world, case)
    assert row.state is DispatchState.PENDING  # armed in the send's own transaction
    assert writeback.deliver(row.id) == "written"
    receive(world, case)
    assert writeback.deliver(row.id) == "written"
    cases = od.rows("labcases")
    assert len(cases) == 1
    lab_case = cases[0]
    assert lab_case["LaboratoryNum"] == 2 and lab_case["PatNum"] == 1 and lab_case["ProvNum"] == 1
    assert lab_case["DateTimeSent"] != "0001-01-01 00:00:00" and lab_case["DateTimeRecd"] != "0001-01-01 00:00:00"
    assert lab_case["DateTimeChecked"] == lab_case["DateTimeRecd"]
    assert f"[Lab Manager {case.number}]" in lab_case["Instructions"]
    assert lab_case["DateTimeDue"].startswith(case.due_date.isoformat())
    assert [r["endpoint"] for r in od.requests() if r["endpoint"].startswith("labcase")] == [
        "labcase_create", "labcase_update", "labcase_update"]
    assert audit_count("pms_lab_case.written") == 2
    login("coordinator")
    page = client.get(f"/cases/{case.id}").get_data(as_text=True)
    assert f"#{lab_case['LabCaseNum']}" in page and "went through" in page


def test_a_due_date_change_after_sending_updates_the_lab_case(world, od):
    i, case = setup(world, od)
    row = send(world, case)
    writeback.deliver(row.id)
    data = case_services.CaseData(
        patient_id=case.patient_id, provider_id=case.provider_id, lab_id=case.lab_id,
        seat_appointment_id=None, due_date=dt.date.today() + dt.timedelta(days=20),
        items=[case_services.ItemData(teeth=["11"], restoration="crown", material="zirconia", shade="A2",
                                      margin="chamfer")])
    case_services.update_case(case, data, actor(world))
    db.session.commit()
    assert writeback.deliver(row.id) == "written"
    assert od.rows("labcases")[0]["DateTimeDue"].startswith((dt.date.today() + dt.timedelta(days=20)).isoformat())


def test_a_lost_answer_then_a_retry_gives_one_lab_case_not_two(world, od):
    i, case = setup(world, od)
    od.fault("labcase_create", "lost")  # Open Dental creates it, but the answer never arrives
    row = send(world, case)
    assert writeback.deliver(row.id) == "retry"
    assert len(od.rows("labcases")) == 1
    db.session.expire_all()
    row = db.session.get(PmsLabCase, row.id)
    assert row.state is DispatchState.PENDING and row.ref == ""
    row.next_attempt_at = dt.datetime(2000, 1, 1)
    db.session.commit()
    assert writeback.deliver(row.id) == "written"
    assert len(od.rows("labcases")) == 1  # found by its marker, not created again
    db.session.expire_all()
    assert db.session.get(PmsLabCase, row.id).ref == str(od.rows("labcases")[0]["LabCaseNum"])
    assert audit_count("pms_lab_case.found") == 1


def test_a_400_shows_on_the_case_with_retry(world, od, client, login):
    i, case = setup(world, od)
    od.fault("labcase_create", "400")
    row = send(world, case)
    assert writeback.deliver(row.id) == "failed"
    assert audit_count("pms_lab_case.failed") == 1
    login("coordinator")
    page = client.get(f"/cases/{case.id}").get_data(as_text=True)
    assert "did not go through" in page and "Invalid request" in page and "Retry" in page
    response = client.post(f"/cases/{case.id}/pms/retry")
    assert response.status_code in (302, 303)
    db.session.expire_all()
    assert db.session.get(PmsLabCase, row.id).state is DispatchState.PENDING
    assert writeback.deliver(row.id) == "written"
    assert len(od.rows("labcases")) == 1


def test_a_401_on_a_write_pauses_the_integration(world, od):
    i, case = setup(world, od)
    od.fault("labcase_create", "401")
    row = send(world, case)
    assert writeback.deliver(row.id) == "failed"
    i = reload(i.id)
    assert i.active is False and "Paused" in i.last_error
    assert od.rows("labcases") == []


def test_a_case_whose_lab_is_not_linked_says_so_and_sends_nothing(world, od):
    i, case = setup(world, od)
    db.session.scalar(select(PmsLaboratory).where(PmsLaboratory.ref == "2")).lab_id = None
    db.session.commit()
    row = send(world, case)
    assert writeback.deliver(row.id) == "failed"
    db.session.expire_all()
    assert "not linked" in db.session.get(PmsLabCase, row.id).last_error
    assert od.requests("labcase_create") == []


def cancel(world, case, reason="Patient moved away"):
    case_services.move_case(case, Status.CANCELLED.value, actor(world), reason=reason)
    db.session.commit()


def test_a_cancelled_case_reaches_its_lab_case_and_the_timeline_shows_each_write(world, od, client, login):
    i, case = setup(world, od)
    row = send(world, case)
    assert writeback.deliver(row.id) == "written"
    cancel(world, case)
    db.session.expire_all()
    assert db.session.get(PmsLabCase, row.id).state is DispatchState.PENDING  # armed by the cancellation
    assert writeback.deliver(row.id) == "written"
    cases = od.rows("labcases")
    assert len(cases) == 1
    assert cases[0]["Instructions"].startswith(f"[Lab Manager {case.number}] CANCELLED in Lab Manager on ")
    assert "Patient moved away" in cases[0]["Instructions"]
    login("coordinator")
    page = client.get(f"/cases/{case.id}").get_data(as_text=True)
    timeline = page[page.index('class="timeline"'):]
    assert timeline.count("written to Open Dental") == 2
    assert "lab case created in Open Dental" in timeline and f"lab case #{cases[0]['LabCaseNum']}" in timeline
    assert "queued" not in timeline


def test_a_failed_write_is_on_the_timeline_with_its_reason(world, od, client, login):
    i, case = setup(world, od)
    od.fault("labcase_create", "400")
    row = send(world, case)
    assert writeback.deliver(row.id) == "failed"
    login("coordinator")
    page = client.get(f"/cases/{case.id}").get_data(as_text=True)
    timeline = page[page.index('class="timeline"'):]
    assert "Open Dental write failed" in timeline and "Invalid request" in timeline


def test_a_case_cancelled_before_it_was_sent_asks_nothing_of_the_pms(world, od):
    i, case = setup(world, od)
    cancel(world, case)
    assert db.session.scalar(select(PmsLabCase).where(PmsLabCase.case_id == case.id)) is None
    assert od.rows("labcases") == []


def test_a_case_cancelled_before_its_first_write_went_through_creates_nothing(world, od, client, login):
    i, case = setup(world, od)
    od.fault("labcase_create", "500")
    row = send(world, case)
    assert writeback.deliver(row.id) == "retry"
    cancel(world, case)
    db.session.expire_all()
    row = db.session.get(PmsLabCase, row.id)
    row.next_attempt_at = dt.datetime(2000, 1, 1)
    db.session.commit()
    assert writeback.deliver(row.id) == "not needed"
    assert od.rows("labcases") == []
    db.session.expire_all()
    assert db.session.get(PmsLabCase, row.id).state is DispatchState.DELIVERED
    login("coordinator")
    page = client.get(f"/cases/{case.id}").get_data(as_text=True)
    assert "the case was cancelled before Open Dental had one" in page
    assert "nothing to write to Open Dental" in page


def test_open_cases_sent_before_connecting_can_be_written_once_from_the_integration_page(world, od, client, login):
    i, case = setup(world, od)
    reload(i.id).active = False  # paused (or not connected yet) when the case is sent
    db.session.commit()
    send(world, case)
    assert db.session.scalar(select(PmsLabCase).where(PmsLabCase.case_id == case.id)) is None
    reload(i.id).active = True
    db.session.commit()
    login("admin")
    page = client.get(f"/admin/scanners/{i.id}").get_data(as_text=True)
    assert "1 open case sent before Open Dental was connected (or while it was paused) has no lab case" in page
    answer = client.post(f"/admin/scanners/{i.id}/pms/write-open-cases")
    assert answer.status_code in (302, 303)
    row = db.session.scalar(select(PmsLabCase).where(PmsLabCase.case_id == case.id))
    assert row is not None and row.state is DispatchState.PENDING and row.last_reason == "connected"
    assert writeback.deliver(row.id) == "written"
    assert len(od.rows("labcases")) == 1
    assert audit_count("pms.open_cases_queued") == 1
    page = client.get(f"/admin/scanners/{i.id}").get_data(as_text=True)
    assert "sent before Open Dental was connected" not in page  # asked once: not offered again
