import datetime as dt
import json

from sqlalchemy import func, select

from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.extensions import db
from portal.people.models import Appointment, AppointmentKind, Patient, Provider
from tests import factories


def _audit(action):
    return db.session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)).all()


def _count(model):
    return db.session.scalar(select(func.count()).select_from(model))


PATIENT = {"chart_number": "D2001", "first_name": "Grace", "last_name": "Hopper", "date_of_birth": "1906-12-09",
           "sex": "F", "phone": "+1 555 0199", "email": "grace@example.test"}


def test_coordinator_creates_a_patient_and_it_is_audited(client, login, world):
    login()
    response = client.post("/patients/new", PATIENT)
    assert response.status_code == 303
    patient = db.session.scalar(select(Patient).where(Patient.chart_number == "D2001"))
    assert response.headers["Location"].endswith(f"/patients/{patient.id}")
    assert (patient.first_name, patient.last_name, patient.date_of_birth, patient.sex) == (
        "Grace", "Hopper", dt.date(1906, 12, 9), "F")
    [row] = _audit("patient.create")
    assert row.entity_id == str(patient.id) and row.practice_id == world.practice.id
    assert json.loads(row.after)["chart_number"] == "D2001"
    page = client.get(f"/patients/{patient.id}").get_data(as_text=True)
    assert "Hopper, Grace" in page and "grace@example.test" in page


def test_htmx_create_redirects_with_hx_redirect(client, login, world):
    login()
    response = client.post("/patients/new", PATIENT, htmx="patient-form")
    assert response.status_code == 204
    patient = db.session.scalar(select(Patient).where(Patient.chart_number == "D2001"))
    assert response.headers["HX-Redirect"] == f"/patients/{patient.id}"


def test_invalid_patient_is_422_with_errors_beside_fields_and_writes_nothing(client, login, world):
    login()
    before = _count(AuditEvent)
    response = client.post("/patients/new", {**PATIENT, "last_name": " ", "email": "nope",
                                             "date_of_birth": "2999-01-01"}, htmx="patient-form")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "<html" not in html and 'id="patient-form"' in html
    assert 'id="last_name-error">Give the last name.' in html
    assert 'id="email-error">That is not an email address.' in html
    assert 'id="date_of_birth-error">The date of birth is in the future.' in html
    assert _count(Patient) == 0 and _count(AuditEvent) == before
    # Without htmx the whole page comes back, still 422.
    response = client.post("/patients/new", {**PATIENT, "first_name": ""})
    assert response.status_code == 422 and "<html" in response.get_data(as_text=True)


def test_chart_number_is_unique_per_practice(client, login, world):
    factories.patient(world.practice, chart="D2001")
    factories.patient(world.other_practice, chart="X1")
    db.session.commit()
    login()
    response = client.post("/patients/new", {**PATIENT, "last_name": ""}, htmx="patient-form")
    assert response.status_code == 422
    html = response.get_data(as_text=True)  # every problem at once, not one per round trip
    assert 'id="chart_number-error">Chart number D2001 is already' in html and "Give the last name." in html
    # Another practice's chart number is no obstacle.
    assert client.post("/patients/new", {**PATIENT, "chart_number": "X1"}).status_code == 303


def test_edit_patient_audits_only_changed_fields(client, login, world):
    patient = factories.patient(world.practice, first="Ada", last="Lovelace", chart="D1")
    db.session.commit()
    login()
    page = client.get(f"/patients/{patient.id}/edit").get_data(as_text=True)
    assert 'value="Lovelace"' in page
    response = client.post(f"/patients/{patient.id}/edit", {
        "chart_number": "D1", "first_name": "Ada", "last_name": "King", "date_of_birth": "1980-05-17", "sex": "",
        "phone": "", "email": ""})
    assert response.status_code == 303
    [row] = _audit("patient.update")
    assert json.loads(row.before) == {"last_name": "Lovelace"} and json.loads(row.after) == {"last_name": "King"}
    # Saving the same values again changes nothing and writes no audit row.
    client.post(f"/patients/{patient.id}/edit", {
        "chart_number": "D1", "first_name": "Ada", "last_name": "King", "date_of_birth": "1980-05-17", "sex": "",
        "phone": "", "email": ""})
    assert len(_audit("patient.update")) == 1


def test_another_practices_rows_are_404(client, login, world):
    patient = factories.patient(world.other_practice)
    provider = factories.provider(world.other_practice)
    appointment = factories.appointment(patient, dt.date.today() + dt.timedelta(days=3))
    db.session.commit()
    login()
    for url in (f"/patients/{patient.id}", f"/patients/{patient.id}/edit", f"/providers/{provider.id}/edit",
                f"/appointments/{appointment.id}/edit"):
        assert client.get(url).status_code == 404, url
    assert client.post(f"/patients/{patient.id}/edit", {**PATIENT}).status_code == 404
    assert client.post(f"/providers/{provider.id}/edit", {"abbr": "X", "name": "X"}).status_code == 404
    mine = factories.patient(world.practice)
    db.session.commit()
    assert client.post(f"/appointments/{appointment.id}/edit", {
        "patient_id": mine.id, "provider_id": 0, "day": "2030-01-01", "time": "09:00", "kind": "seat"}
    ).status_code == 404
    # Naming another practice's patient in a form is refused too.
    response = client.post("/appointments/new", {"patient_id": patient.id, "provider_id": 0, "day": "2030-01-01",
                                                 "time": "09:00", "kind": "seat"})
    assert response.status_code == 422
    db.session.refresh(patient)
    assert _count(Appointment) == 1 and patient.last_name.startswith("Lovelace")


def test_manager_reads_but_cannot_edit(client, login, world):
    patient = factories.patient(world.practice)
    appointment = factories.appointment(patient, dt.date.today() + dt.timedelta(days=3))
    db.session.commit()
    login("manager")
    for url in ("/patients", f"/patients/{patient.id}", "/providers", "/appointments"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "New patient" not in response.get_data(as_text=True)
    for url in ("/patients/new", f"/patients/{patient.id}/edit", "/providers/new",
                f"/providers/{world.provider.id}/edit", "/appointments/new", f"/appointments/{appointment.id}/edit",
                "/people/import"):
        assert client.get(url).status_code == 403, url
    assert client.post(f"/patients/{patient.id}/edit", {**PATIENT}).status_code == 403
    assert client.post("/patients/new", PATIENT).status_code == 403
    assert _count(Patient) == 1 and not _audit("patient.update")


def test_providers_create_and_edit(client, login, world):
    login()
    response = client.post("/providers/new", {"abbr": "DRN", "name": "Dr. Priya Nair", "license_number": "DDS-1",
                                              "active": "y"})
    assert response.status_code == 303
    provider = db.session.scalar(select(Provider).where(Provider.abbr == "DRN"))
    assert provider.active and provider.license_number == "DDS-1"
    response = client.post("/providers/new", {"abbr": "DRN", "name": "Someone"}, htmx="provider-form")
    assert response.status_code == 422 and "already Dr. Priya Nair" in response.get_data(as_text=True)
    response = client.post(f"/providers/{provider.id}/edit", {"abbr": "DRN", "name": "Dr. Priya Nair",
                                                              "license_number": "DDS-1"})  # unchecked: inactive
    assert response.status_code == 303
    db.session.refresh(provider)
    assert not provider.active
    [row] = _audit("provider.update")
    assert json.loads(row.after) == {"active": False}
    assert "DRN" in client.get("/providers").get_data(as_text=True)


def test_appointment_form_books_and_returns_to_the_patient(client, login, world):
    patient = factories.patient(world.practice)
    db.session.commit()
    login()
    page = client.get(f"/appointments/new?patient_id={patient.id}").get_data(as_text=True)
    assert f'<option selected value="{patient.id}">' in page
    response = client.post("/appointments/new", {
        "patient_id": patient.id, "provider_id": world.provider.id, "day": "2030-03-04", "time": "14:30",
        "kind": "try_in", "note": "bring the bite", "next": "patient"})
    assert response.status_code == 303 and response.headers["Location"].endswith(f"/patients/{patient.id}")
    appointment = db.session.scalar(select(Appointment))
    assert appointment.starts_at == dt.datetime(2030, 3, 4, 14, 30) and appointment.kind is AppointmentKind.TRY_IN
    assert len(_audit("appointment.create")) == 1
    response = client.post("/appointments/new", {"patient_id": 0, "provider_id": 0, "day": "", "time": "25:00",
                                                 "kind": "seat"}, htmx="appointment-form")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'id="patient_id-error">Choose the patient.' in html and 'id="day-error">Give the date.' in html
    assert 'id="time-error"' in html
    assert _count(Appointment) == 1


def test_moving_an_appointment_updates_the_seat_risk_of_its_case(client, login, world):
    today = dt.date.today()
    case = factories.case(world, Status.SENT, seat=today + dt.timedelta(days=40), due=today + dt.timedelta(days=10))
    assert case.seat_risk is False
    appointment = case.seat_appointment
    login()
    response = client.post(f"/appointments/{appointment.id}/edit", {
        "patient_id": appointment.patient_id, "provider_id": 0, "day": (today + dt.timedelta(days=9)).isoformat(),
        "time": "10:00", "kind": "seat"})
    assert response.status_code == 303
    db.session.expire_all()
    assert db.session.get(LabCase, case.id).seat_risk is True
    [row] = _audit("appointment.update")
    assert set(json.loads(row.after)) == {"starts_at"}
    # And back again: the risk clears.
    client.post(f"/appointments/{appointment.id}/edit", {
        "patient_id": appointment.patient_id, "provider_id": 0, "day": (today + dt.timedelta(days=40)).isoformat(),
        "time": "10:00", "kind": "seat"})
    db.session.expire_all()
    assert db.session.get(LabCase, case.id).seat_risk is False


def test_patient_page_shows_appointments_cases_and_actions(client, login, world):
    today = dt.date.today()
    case = factories.case(world, Status.SENT, seat=today + dt.timedelta(days=20))
    past = factories.appointment(case.patient, today - dt.timedelta(days=30), kind=AppointmentKind.OTHER)
    other = factories.case(world, Status.SENT)  # another patient's case stays off this page
    db.session.commit()
    login()
    page = client.get(f"/patients/{case.patient_id}").get_data(as_text=True)
    assert f'href="/cases/{case.id}"' in page and case.number in page
    assert other.number not in page
    assert f'href="/cases/new?patient_id={case.patient_id}"' in page
    assert f'href="/appointments/new?patient_id={case.patient_id}"' in page
    upcoming = (today + dt.timedelta(days=20)).strftime("%d %b %Y")
    assert upcoming in page and past.starts_at.strftime("%d %b %Y") in page
    assert page.index(upcoming) < page.index(past.starts_at.strftime("%d %b %Y"))


def test_appointments_list_upcoming_first_and_date_filter(client, login, world):
    today = dt.date.today()
    patient = factories.patient(world.practice, last="Zed")
    near = factories.appointment(patient, today + dt.timedelta(days=2))
    far = factories.appointment(patient, today + dt.timedelta(days=20))
    old = factories.appointment(patient, today - dt.timedelta(days=5))
    older = factories.appointment(patient, today - dt.timedelta(days=50))
    db.session.commit()
    login()
    html = client.get("/appointments").get_data(as_text=True)
    order = [html.index(f"/appointments/{a.id}/edit") for a in (near, far, old, older)]
    assert order == sorted(order)
    start, end = today - dt.timedelta(days=10), today + dt.timedelta(days=10)
    response = client.hx(f"/appointments?from={start}&to={end}", "appointment-rows")
    fragment = response.get_data(as_text=True)
    assert response.status_code == 200 and "<html" not in fragment and 'id="appointment-rows"' in fragment
    assert f"/appointments/{near.id}/edit" in fragment and f"/appointments/{old.id}/edit" in fragment
    assert f"/appointments/{far.id}/edit" not in fragment and f"/appointments/{older.id}/edit" not in fragment
    assert "Vary" in response.headers and "HX-Request" in response.headers["Vary"]
    assert "is not a date" in client.get("/appointments?from=junk").get_data(as_text=True)


def test_patient_list_search_and_partial(client, login, world):
    factories.patient(world.practice, first="Ava", last="Nguyen", chart="D1001")
    factories.patient(world.practice, first="Liam", last="Garcia", chart="D1002")
    factories.patient(world.other_practice, first="Ava", last="Elsewhere", chart="R1")
    db.session.commit()
    login()
    page = client.get("/patients").get_data(as_text=True)
    assert "Nguyen, Ava" in page and "Garcia, Liam" in page and "Elsewhere" not in page
    assert 'href="/providers"' in page and 'href="/appointments"' in page  # the people sub-nav
    fragment = client.hx("/patients?q=ngu", "patient-rows").get_data(as_text=True)
    assert "<html" not in fragment and "Nguyen, Ava" in fragment and "Garcia" not in fragment
    assert "Nguyen" in client.get("/patients?q=d1001").get_data(as_text=True)


def test_patient_name_with_script_renders_escaped(client, login, world):
    evil = "<script>alert(1)</script>"
    patient = factories.patient(world.practice, first=evil, last='" onmouseover="alert(2)')
    factories.appointment(patient, dt.date.today() + dt.timedelta(days=1))
    db.session.commit()
    login()
    for url in ("/patients", f"/patients/{patient.id}", "/appointments", f"/patients/{patient.id}/edit",
                "/appointments/new"):
        html = client.get(url).get_data(as_text=True)
        assert evil not in html, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, url
        assert '" onmouseover="alert(2)' not in html, url
