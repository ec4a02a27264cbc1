"""Open Dental in: patients, providers, appointments and laboratories read from the sandbox over
real HTTP, incrementally by DateTStamp, every page, matched to the practice's rows."""
from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from portal.cases.status import Status
from portal.extensions import db
from portal.integrations.models import PmsLaboratory, PmsMatch
from portal.integrations.sync import run_sync
from portal.people.models import Appointment, Patient, Provider
from portal.people.services import parse_csv, import_patients
from portal.audit.actor import Actor
from tests import factories
from tests.integrations.opendental_support import audit_count, od_integration, reload


def count(model, **where) -> int:
    stmt = select(func.count()).select_from(model)
    for k, v in where.items():
        stmt = stmt.where(getattr(model, k) == v)
    return db.session.scalar(stmt)


def test_first_sync_reads_every_page_then_only_what_changed(world, od):
    od.seed(patients=2000, appointments=5000, providers=4, laboratories=3)
    i = od_integration(world.practice, od.base_url)
    result = run_sync(i.id)
    assert "error" not in result, result
    assert count(Patient, practice_id=world.practice.id) == 2000
    assert count(Appointment, practice_id=world.practice.id) == 5000
    assert count(Provider, practice_id=world.practice.id) == 4 + 1  # the world's own provider too
    assert count(PmsLaboratory, integration_id=i.id) == 3
    i = reload(i.id)
    assert i.last_success_at is not None and i.last_error == ""
    assert i.config["progress"]["state"] == "done"
    assert set(i.config["cursors"]) == {"patients", "appointments", "providers", "laboratories",
                                        "deleted_appointments"}
    # every page asked for, 100 at a time
    offsets = [int(r["query"]["Offset"]) for r in od.requests("patients")]
    assert all(r["query"]["Limit"] == "100" for r in od.requests("patients"))
    assert offsets[:3] == [0, 99, 198] and len(offsets) >= 2000 // 99

    od.clear_log()
    od.tick(2)
    od.change("patients", 17, LName="Changed")
    od.change("patients", 1500, Email="new@example.net")
    apt = od.change("appointments", 4000, AptDateTime="2031-01-02 09:30:00")
    result = run_sync(i.id)
    assert result["patients"] == {"updated": 2}, result
    assert result["appointments"] == {"updated": 1}, result
    assert od.counters == {"patients": 1, "appointments": 1, "providers": 1, "laboratories": 1,
                           "histappointments": 1}
    assert db.session.scalar(select(Patient.last_name).where(Patient.external_id == "17")) == "Changed"
    moved = db.session.scalar(select(Appointment).where(Appointment.external_id == str(apt["AptNum"])))
    assert moved.starts_at == dt.datetime(2031, 1, 2, 9, 30)

    od.clear_log()
    result = run_sync(i.id)  # nothing changed: one request per resource
    assert od.counters == {"patients": 1, "appointments": 1, "providers": 1, "laboratories": 1,
                           "histappointments": 1}
    assert result["patients"] == {} or set(result["patients"]) <= {"unchanged"}


def test_rows_that_change_or_appear_while_pages_are_read_are_not_lost(world, od):
    od.seed(patients=450, appointments=0, providers=1, laboratories=0)
    i = od_integration(world.practice, od.base_url)

    def meanwhile():
        od.change("patients", 5, FName="Renamed")  # behind the reader: its page was read already
        od.tick(3)
        od.add("patients", FName="Newcomer", LName="Late", Birthdate="1990-01-01", ChartNumber="LATE-1")

    od.during("patients", 3, meanwhile)
    run_sync(i.id)
    assert db.session.scalar(select(Patient.id).where(Patient.chart_number == "LATE-1")) is not None
    assert count(Patient, practice_id=world.practice.id) == 451
    run_sync(i.id)  # the next sync starts from the server's clock when the last read began
    assert db.session.scalar(select(Patient.first_name).where(Patient.external_id == "5")) == "Renamed"


def test_same_patient_from_csv_and_api_is_one_row(world, od):
    csv = b"PatNum,LName,FName,Birthdate,ChartNumber\n1,Rivera,Ana,1980-05-06,A-100\n"
    import_patients(world.practice.id, parse_csv(csv), Actor.system("test"))
    # a patient typed in by hand, with the chart number Open Dental has
    factories.patient(world.practice, "Ben", "Okafor", chart="B-200")
    db.session.commit()
    od.add("patients", FName="Ana", LName="Rivera", Birthdate="1980-05-06", ChartNumber="A-100")  # PatNum 1
    od.add("patients", FName="Ben", LName="Okafor", Birthdate="1975-01-01", ChartNumber="B-200")  # PatNum 2
    i = od_integration(world.practice, od.base_url)
    run_sync(i.id)
    assert count(Patient, practice_id=world.practice.id) == 2
    assert db.session.scalar(select(Patient.external_id).where(Patient.chart_number == "B-200")) == "2"


def test_two_candidates_by_name_and_birth_date_wait_for_a_person(world, od):
    for chart in ("X1", "X2"):
        p = factories.patient(world.practice, "Cara", "Lind", chart=chart)
        p.date_of_birth = dt.date(1970, 3, 3)
    db.session.commit()
    od.add("patients", FName="Cara", LName="Lind", Birthdate="1970-03-03", ChartNumber="")
    i = od_integration(world.practice, od.base_url)
    run_sync(i.id)
    assert count(Patient, practice_id=world.practice.id) == 2  # nothing created
    match = db.session.scalar(select(PmsMatch))
    assert match.state == "waiting" and len(match.candidate_ids) == 2
    assert audit_count("pms.match_waiting") == 1
    assert count(Appointment) == 0  # its appointment waits with it


def test_a_patient_a_person_matched_gets_the_appointments_left_out_meanwhile(world, od):
    from portal.integrations import pms

    for chart in ("X1", "X2"):
        factories.patient(world.practice, "Cara", "Lind", chart=chart).date_of_birth = dt.date(1970, 3, 3)
    db.session.commit()
    pat = od.add("patients", FName="Cara", LName="Lind", Birthdate="1970-03-03", ChartNumber="")
    od.add("appointments", PatNum=pat["PatNum"], AptStatus="Scheduled", AptDateTime="2030-05-06 10:00:00",
           ProvNum=0, ProcDescript="Crown seat", Note="", ClinicNum=0)
    i = od_integration(world.practice, od.base_url)
    run_sync(i.id)
    assert count(Appointment) == 0
    match = db.session.scalar(select(PmsMatch))
    pms.resolve_match(match, match.candidate_ids[0], Actor.system("test"))
    db.session.commit()
    run_sync(i.id)  # nothing changed at Open Dental since: the appointment comes from the patient's own read
    appointment = db.session.scalar(select(Appointment))
    assert appointment is not None and appointment.patient_id == match.candidate_ids[0]
    assert reload(i.id).config.get("pending_patients") == []


def _case_with_od_seat(world, od, integration_days: int = 20):
    od.add("providers", Abbr="DRX", FName="X", LName="Doc", IsHidden="false")
    pat = od.add("patients", FName="Dana", LName="Seat", Birthdate="1966-06-06", ChartNumber="S-1")
    when = dt.datetime.combine(dt.date.today() + dt.timedelta(days=integration_days), dt.time(9))
    apt = od.add("appointments", PatNum=pat["PatNum"], AptStatus="Scheduled",
                 AptDateTime=when.strftime("%Y-%m-%d %H:%M:%S"), ProvNum=1, ProcDescript="Crown seat",
                 Note="", ClinicNum=0)
    i = od_integration(world.practice, od.base_url)
    run_sync(i.id)
    patient = db.session.scalar(select(Patient).where(Patient.external_id == str(pat["PatNum"])))
    appointment = db.session.scalar(select(Appointment).where(Appointment.external_id == str(apt["AptNum"])))
    case = factories.case(world, Status.SENT, patient_obj=patient, due=dt.date.today() + dt.timedelta(days=10))
    case.seat_appointment_id = appointment.id
    db.session.commit()
    return i, case, apt


def test_a_moved_seat_appointment_changes_seat_risk_in_one_sync(world, od):
    i, case, apt = _case_with_od_seat(world, od)
    assert case.seat_risk is False
    od.tick(2)
    soon = dt.datetime.combine(dt.date.today() + dt.timedelta(days=3), dt.time(9))
    od.change("appointments", apt["AptNum"], AptDateTime=soon.strftime("%Y-%m-%d %H:%M:%S"))
    run_sync(i.id)
    db.session.expire_all()
    case = db.session.get(type(case), case.id)
    assert case.seat_date == soon.date()
    assert case.seat_risk is True
    from portal.cases.services import timeline

    assert [e.action for e in timeline(case)][0] == "case.seat_appointment_moved"


def test_a_broken_seat_appointment_is_shown_on_the_case(world, od, client, login):
    i, case, apt = _case_with_od_seat(world, od)
    od.tick(2)
    od.change("appointments", apt["AptNum"], AptStatus="Broken")
    run_sync(i.id)
    db.session.expire_all()
    case = db.session.get(type(case), case.id)
    assert case.seat_appointment_id is None
    login("coordinator")
    page = client.get(f"/cases/{case.id}").get_data(as_text=True)
    assert "seat appointment cancelled" in page
    assert "is broken in Open Dental" in page


def test_a_visit_typed_in_before_connecting_is_linked_not_booked_twice(world, od):
    when = dt.datetime.combine(dt.date.today() + dt.timedelta(days=12), dt.time(10, 30))
    patient = Patient(practice_id=world.practice.id, chart_number="T-1", first_name="Tia", last_name="Typed",
                      date_of_birth=dt.date(1980, 3, 3))
    db.session.add(patient)
    db.session.flush()
    typed = Appointment(practice_id=world.practice.id, patient_id=patient.id, starts_at=when, note="typed here")
    db.session.add(typed)
    db.session.flush()
    case = factories.case(world, Status.SENT, patient_obj=patient, due=dt.date.today() + dt.timedelta(days=8))
    case.seat_appointment_id = typed.id
    db.session.commit()
    pat = od.add("patients", FName="Tia", LName="Typed", Birthdate="1980-03-03", ChartNumber="T-1")
    apt = od.add("appointments", PatNum=pat["PatNum"], AptStatus="Scheduled",
                 AptDateTime=when.strftime("%Y-%m-%d %H:%M:%S"), ProvNum=0, ProcDescript="Crown seat", Note="",
                 ClinicNum=0)
    od.add("appointments", PatNum=pat["PatNum"], AptStatus="Scheduled", ProvNum=0, ProcDescript="Exam", Note="",
           AptDateTime=(when + dt.timedelta(days=30)).strftime("%Y-%m-%d %H:%M:%S"), ClinicNum=0)
    i = od_integration(world.practice, od.base_url)
    result = run_sync(i.id)
    assert result["appointments"] == {"linked": 1, "created": 1}, result
    assert count(Appointment, patient_id=patient.id) == 2
    db.session.expire_all()
    assert db.session.get(Appointment, typed.id).external_id == str(apt["AptNum"])
    od.tick(2)
    later = when + dt.timedelta(days=2)
    od.change("appointments", apt["AptNum"], AptDateTime=later.strftime("%Y-%m-%d %H:%M:%S"))
    run_sync(i.id)
    db.session.expire_all()
    assert db.session.get(type(case), case.id).seat_date == later.date()  # the case follows Open Dental now


def test_a_deleted_seat_appointment_takes_the_seat_date_off_the_case_in_one_sync(world, od, client, login):
    i, case, apt = _case_with_od_seat(world, od)
    od.tick(2)
    od.delete("appointments", apt["AptNum"])
    od.clear_log()
    result = run_sync(i.id)
    assert result["deleted_appointments"] == {"deleted": 1, "cases": 1}, result
    assert od.requests("histappointments")[0]["query"]["HistApptAction"] == "Deleted"
    db.session.expire_all()
    case = db.session.get(type(case), case.id)
    assert case.seat_appointment_id is None
    appointment = db.session.scalar(select(Appointment).where(Appointment.external_id == str(apt["AptNum"])))
    assert appointment.not_happening == "deleted"  # kept, marked: never a seat date again
    login("coordinator")
    page = client.get(f"/cases/{case.id}").get_data(as_text=True)
    assert "seat appointment cancelled" in page and "is deleted in Open Dental" in page
    # the next sync reads the same day's deletions again and changes nothing
    od.clear_log()
    assert run_sync(i.id)["deleted_appointments"] == {"unchanged": 1}
    assert od.counters["histappointments"] == 1
    assert audit_count("case.seat_appointment_cancelled") == 1


def test_deletions_before_the_first_sync_are_not_read(world, od):
    od.seed(patients=5, appointments=30, providers=1, laboratories=0)
    for n in range(1, 11):
        od.delete("appointments", n)
    i = od_integration(world.practice, od.base_url)
    result = run_sync(i.id)
    assert count(Appointment, practice_id=world.practice.id) == 20
    assert set(result["deleted_appointments"]) <= {"unchanged"}


def test_a_visit_the_pms_called_off_is_never_offered_or_chosen_as_a_seat_date(world, od, client, login):
    from portal.scans.services import _seat_appointment

    i, case, apt = _case_with_od_seat(world, od)
    od.tick(2)
    od.change("appointments", apt["AptNum"], AptStatus="Broken")
    run_sync(i.id)
    appointment = db.session.scalar(select(Appointment).where(Appointment.external_id == str(apt["AptNum"])))
    assert appointment.not_happening == "broken"
    scan = SimpleNamespace(practice_id=case.practice_id, patient_id=case.patient_id)  # what the lookup reads
    assert _seat_appointment(scan) is None  # a new scan of the patient does not pick the broken visit
    login("coordinator")
    form = client.get(f"/cases/{case.id}/edit").get_data(as_text=True)
    seat_select = form[form.index('name="seat_appointment_id"'):]
    seat_select = seat_select[:seat_select.index("</select>")]
    assert "none yet" in seat_select and f'value="{appointment.id}"' not in seat_select
    patient_page = client.get(f"/patients/{case.patient_id}").get_data(as_text=True)
    assert "broken" in patient_page


def test_a_patient_the_pms_lists_as_deceased_is_shown_and_each_open_case_says_so(world, od, client, login):
    i, case, apt = _case_with_od_seat(world, od)
    od.tick(2)
    pat_num = int(case.patient.external_id)
    od.change("patients", pat_num, PatStatus="Deceased")
    result = run_sync(i.id)
    assert result["patients"].get("updated") == 1, result
    db.session.expire_all()
    assert db.session.get(Patient, case.patient_id).pms_standing == "deceased"
    login("coordinator")
    page = client.get(f"/cases/{case.id}").get_data(as_text=True)
    assert "Patient deceased" in page
    assert "Open Dental now lists the patient as deceased" in page
    board = client.get("/").get_data(as_text=True)
    card = board[board.index(f'data-case-number="{case.number}"'):]
    assert "Patient deceased" in card[:card.index("</li>")]
    od.tick(2)
    od.change("patients", pat_num, PatStatus="Patient")
    run_sync(i.id)
    db.session.expire_all()
    assert db.session.get(Patient, case.patient_id).pms_standing == ""
    assert audit_count("case.patient_standing_changed") == 2


def test_a_nul_character_from_the_pms_is_dropped_not_a_failed_sync(world, od):
    od.add("providers", Abbr="DR\u0000X", FName="X", LName="Doc", IsHidden="false")
    od.add("patients", FName="Ann\u0000", LName="Nul", Birthdate="1970-01-01", ChartNumber="N\u00001")
    i = od_integration(world.practice, od.base_url)
    result = run_sync(i.id)
    assert "error" not in result, result  # PostgreSQL text can't hold NUL: the insert failed there
    patient = db.session.scalar(select(Patient).where(Patient.last_name == "Nul"))
    assert (patient.first_name, patient.chart_number) == ("Ann", "N1")
    assert db.session.scalar(select(Provider.abbr).where(Provider.external_id == "1")) == "DRX"


@pytest.mark.parametrize("kind", ["500", "429"])
def test_a_vendor_that_says_later_is_not_read_again_before_it_and_keeps_the_mark(world, od, kind):
    od.seed(patients=250, appointments=0, providers=1, laboratories=0)
    i = od_integration(world.practice, od.base_url)
    od.fault("patients", kind, retry_after=120)
    result = run_sync(i.id)
    assert "error" in result
    i = reload(i.id)
    assert "patients" not in i.config.get("cursors", {})
    assert "try again" in i.last_error
    if kind == "429":
        assert run_sync(i.id)["skipped"] is True  # Retry-After: not before then, no sleeping
    assert i.active


def test_a_401_pauses_the_integration_with_a_message_for_an_admin(world, od):
    i = od_integration(world.practice, od.base_url, customer="revoked-key")
    result = run_sync(i.id)
    assert "error" in result
    i = reload(i.id)
    assert i.active is False
    assert "Paused" in i.last_error and "keys" in i.last_error
    assert audit_count("scanner.stopped") == 1


def test_malformed_json_keeps_nothing_of_the_page_and_says_so(world, od):
    od.seed(patients=150, appointments=0, providers=1, laboratories=0)
    i = od_integration(world.practice, od.base_url)
    od.during("patients", 2, lambda: od.fault("patients", "malformed"))
    result = run_sync(i.id)
    assert "not JSON" in result["error"]
    i = reload(i.id)
    assert "not JSON" in i.last_error
    assert "patients" not in i.config.get("cursors", {})
    # whole pages only: nothing of the one that could not be read (the first may be applied or not,
    # as the sync applies a few pages per transaction)
    assert count(Patient, practice_id=world.practice.id) in (0, 100)
    assert audit_count("scanner.sync_failed") == 1

