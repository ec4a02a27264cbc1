import datetime as dt
import json

import pytest
from sqlalchemy import func, select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.errors import UserError
from portal.extensions import db
from portal.people import services
from portal.people.models import Appointment, AppointmentKind, Patient, Provider
from portal.people.services import parse_csv
from tests import factories
from tests.people.conftest import sample


def _audit(action):
    return db.session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)).all()


def _count(model):
    return db.session.scalar(select(func.count()).select_from(model))


def _rejected(report):
    return [(r.line, r.reason) for r in report.rejected]


def _import(world, kind, content, user="coordinator"):
    report = services.run_import(kind, world.practice.id, content, Actor.user(world.users[user]), f"{kind}.csv")
    db.session.commit()
    return report


PATIENT_REJECTS = [
    (5, "missing last name (LName)"),
    (6, "Birthdate “1990-13-45” is not a date (use YYYY-MM-DD or MM/DD/YYYY)"),
    (7, "duplicate chart number D1001 in the file (first on line 2)"),
    (8, "Email “sophia-at-example” is not an email address"),
    (10, "Gender “Q” is not 0/1/2 or M/F/U"),
]


def test_patients_import_good_rows_and_reports_bad_ones_by_line(world):
    report = _import(world, "patients", sample("patients"))
    assert (report.created, report.updated, report.unchanged) == (4, 0, 0)
    assert _rejected(report) == PATIENT_REJECTS
    assert report.ignored_columns == ["Preferred"]
    patients = {p.chart_number: p for p in db.session.scalars(
        select(Patient).where(Patient.practice_id == world.practice.id))}
    assert set(patients) == {"D1001", "D1002", "1003", "D1008"}
    ava = patients["D1001"]
    assert (ava.last_name, ava.first_name, ava.date_of_birth, ava.sex, ava.phone, ava.email, ava.external_id) == (
        "Nguyen", "Ava", dt.date(1980, 5, 17), "F", "555-0101", "ava@example.test", "1001")
    liam = patients["D1002"]
    assert (liam.date_of_birth, liam.sex, liam.phone) == (dt.date(1975, 3, 14), "M", "555-9102")  # mobile first
    mia = patients["1003"]  # blank ChartNumber: PatNum is the chart number; 0001-01-01 is no date
    assert (mia.date_of_birth, mia.sex) == (None, "")
    assert patients["D1008"].last_name == "Johansson, Jr." and patients["D1008"].date_of_birth == dt.date(1968, 2, 29)
    assert len(_audit("patient.create")) == 4
    [summary] = _audit("patient.import")
    assert json.loads(summary.after)["rejected_lines"] == [5, 6, 7, 8, 10]
    assert json.loads(summary.after)["created"] == 4


def test_reimporting_the_same_file_changes_nothing(world):
    _import(world, "patients", sample("patients"))
    audit_before = _count(AuditEvent)
    report = _import(world, "patients", sample("patients"))
    assert (report.created, report.updated, report.unchanged) == (0, 0, 4)
    assert _rejected(report) == PATIENT_REJECTS
    assert _count(AuditEvent) == audit_before + 1  # the import's summary row, nothing per patient
    assert len(_audit("patient.update")) == 0


def test_a_changed_row_updates_once_with_before_and_after(world):
    _import(world, "patients", sample("patients"))
    changed = sample("patients").replace(b"1002,Garcia,Liam,03/14/1975,0,555-0102,555-9102",
                                         b"1002,Garcia,Liam,03/14/1975,0,555-0102,555-7777")
    report = _import(world, "patients", changed)
    assert (report.created, report.updated, report.unchanged) == (0, 1, 3)
    [row] = _audit("patient.update")
    assert json.loads(row.before) == {"phone": "555-9102"} and json.loads(row.after) == {"phone": "555-7777"}
    report = _import(world, "patients", changed)
    assert (report.created, report.updated, report.unchanged) == (0, 0, 4)
    assert len(_audit("patient.update")) == 1


def test_columns_missing_from_the_file_keep_what_is_stored(world):
    factories.patient(world.practice, first="Ava", last="Nguyen", chart="D1001")
    p = db.session.scalar(select(Patient).where(Patient.chart_number == "D1001"))
    p.email, p.phone = "kept@example.test", "555"
    db.session.commit()
    report = _import(world, "patients", b"chartnumber;lname;fname\nD1001;Nguyen;Ava\n")
    assert (report.created, report.updated, report.unchanged) == (0, 0, 1)
    db.session.refresh(p)
    assert (p.email, p.phone, p.date_of_birth) == ("kept@example.test", "555", dt.date(1980, 5, 17))


def test_providers_import(world):
    report = _import(world, "providers", sample("providers"))
    assert (report.created, report.updated, report.unchanged) == (2, 0, 0)
    assert _rejected(report) == [
        (4, "missing Abbr"),
        (5, "duplicate Abbr DRS in the file (first on line 2)"),
        (6, "IsHidden “maybe” is not 0 or 1"),
    ]
    drs = db.session.scalar(select(Provider).where(Provider.abbr == "DRS"))
    drk = db.session.scalar(select(Provider).where(Provider.abbr == "DRK"))
    assert (drs.name, drs.license_number, drs.active, drs.external_id) == ("Rosa Stein", "DDS-44120", True, "1")
    assert drk.active is False
    again = _import(world, "providers", sample("providers"))
    assert (again.created, again.updated, again.unchanged) == (0, 0, 2)


def test_appointments_import_finds_patients_and_providers_and_infers_kind(world):
    _import(world, "patients", sample("patients"))
    _import(world, "providers", sample("providers"))
    report = _import(world, "appointments", sample("appointments"))
    assert (report.created, report.updated, report.unchanged) == (4, 0, 0)
    assert _rejected(report) == [
        (5, "unknown patient: PatNum 9999 is not in this practice (import patients first)"),
        (6, "AptDateTime “2030-02-30 10:00” is not a date and time (use YYYY-MM-DD HH:MM or MM/DD/YYYY HH:MM)"),
        (7, "unknown provider: ProvNum 77 (import providers first)"),
        (8, "AptStatus Broken: not a booked visit (only Scheduled and Complete appointments are imported)"),
        (9, "duplicate AptNum 5001 in the file (first on line 2)"),
        (12, "AptDateTime “2030-06-10” has a date but no time"),  # line 10-11 is one row with a two-line note
    ]
    appts = {a.external_id: a for a in db.session.scalars(select(Appointment))}
    assert appts["5001"].kind is AppointmentKind.SEAT and appts["5001"].starts_at == dt.datetime(2030, 6, 3, 9, 30)
    assert appts["5001"].provider.abbr == "DRS" and appts["5001"].patient.chart_number == "D1001"
    assert appts["5002"].kind is AppointmentKind.TRY_IN and appts["5002"].starts_at == dt.datetime(2030, 6, 4, 14, 15)
    assert appts["5003"].kind is AppointmentKind.OTHER and appts["5003"].patient.chart_number == "1003"
    assert appts["5008"].kind is AppointmentKind.SEAT and appts["5008"].note == "Crown delivery, bring the shade guide"
    again = _import(world, "appointments", sample("appointments"))
    assert (again.created, again.updated, again.unchanged) == (0, 0, 4)
    assert len(again.rejected) == 6 and not _audit("appointment.update")


def test_kind_column_and_chart_number_and_abbr(world):
    patient = factories.patient(world.practice, chart="D77")
    db.session.commit()
    csv = (f"AptNum,ChartNumber,AptDateTime,Abbr,Kind,Note\n"
           f"1,D77,2030-01-02 08:00,{world.provider.abbr},try-in,\n"
           f"2,D77,01/03/2030 16:45,,Seat,\n"
           f"3,D77,2030-01-04 09:00,,maybe,\n"
           f"4,D77,2030-01-05 09:00,NOPE,,\n").encode()
    report = _import(world, "appointments", csv)
    assert report.created == 2
    assert _rejected(report) == [(4, "Kind “maybe” is not seat, try_in or other"), (5, "unknown provider NOPE")]
    appts = {a.external_id: a for a in db.session.scalars(select(Appointment))}
    assert appts["1"].kind is AppointmentKind.TRY_IN and appts["1"].provider_id == world.provider.id
    assert appts["2"].kind is AppointmentKind.SEAT and appts["2"].patient_id == patient.id
    assert appts["2"].starts_at == dt.datetime(2030, 1, 3, 16, 45)


def test_an_inferred_other_does_not_undo_a_kind_set_in_the_portal(world):
    patient = factories.patient(world.practice, chart="D77")
    db.session.commit()
    csv = b"AptNum,ChartNumber,AptDateTime,Note\n1,D77,2030-01-02 08:00,Exam\n"
    _import(world, "appointments", csv)
    appointment = db.session.scalar(select(Appointment))
    appointment.kind = AppointmentKind.SEAT
    db.session.commit()
    report = _import(world, "appointments", csv)
    assert report.unchanged == 1
    db.session.refresh(appointment)
    assert appointment.kind is AppointmentKind.SEAT and patient.id == appointment.patient_id


def test_an_imported_move_updates_seat_risk_of_the_linked_case(world):
    today = dt.date.today()
    case = factories.case(world, Status.SENT, seat=today + dt.timedelta(days=40), due=today + dt.timedelta(days=10))
    appointment = case.seat_appointment
    appointment.external_id = "A-1"
    db.session.commit()
    assert not case.seat_risk
    moved = (today + dt.timedelta(days=9)).strftime("%m/%d/%Y")
    csv = f"AptNum,ChartNumber,AptDateTime,Kind\nA-1,{case.patient.chart_number},{moved} 10:00,seat\n".encode()
    report = _import(world, "appointments", csv)
    assert report.updated == 1
    db.session.expire_all()
    assert db.session.get(LabCase, case.id).seat_risk is True
    [row] = _audit("appointment.update")
    assert set(json.loads(row.after)) == {"starts_at"}


@pytest.mark.parametrize("content, message", [
    (b"", "The file is empty."),
    (b"\n\r\n  \n", "The file is empty."),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "This is not a CSV file"),
    (b"PatNum,LName,FName\n", "header line but no rows"),
    (b"Title;Year\nDune;1965\n", "None of this file's columns are ones we read for patients"),
    (b"PatNum,FName\n1,Ava\n", "The file has no LName column"),
    (b"just some words\nand more\n", "doesn't look like a CSV header"),
    (b'PatNum,LName,FName\n1,"unterminated,Ava\n', "can't be read as CSV"),
    (b"PatNum,LName,lname,FName\n1,a,b,c\n", "appears twice"),
])
def test_unreadable_files_write_nothing(world, content, message):
    before = _count(AuditEvent)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        services.run_import("patients", world.practice.id, content, Actor.system("test"))
    db.session.rollback()
    assert _count(Patient) == 0 and _count(AuditEvent) == before


def test_parse_is_defensive_about_headers_encoding_and_dates():
    parsed = parse_csv(" PatNum ;L_Name;FNAME\r\n1;Müller;Jürgen\r\n".encode("cp1252"))
    assert parsed.columns == ["patnum", "lname", "fname"]
    assert parsed.rows[0].values == {"patnum": "1", "lname": "Müller", "fname": "Jürgen"}
    utf16 = "PatNum\tLName\tFName\n7\tNovak\tEva\n".encode("utf-16")
    assert parse_csv(utf16).rows[0].get("lname") == "Novak"
    assert services.parse_date("0001-01-01", "Birthdate") is None
    assert services.parse_date("1975-03-14 00:00:00", "Birthdate") == dt.date(1975, 3, 14)
    assert services.parse_date("3/4/1975", "Birthdate") == dt.date(1975, 3, 4)
    assert services.parse_datetime("2030-06-04T14:15:00", "AptDateTime") == dt.datetime(2030, 6, 4, 14, 15)
    assert services.infer_kind("Crown seat #3") is AppointmentKind.SEAT
    assert services.infer_kind("", "Try in denture") is AppointmentKind.TRY_IN
    assert services.infer_kind("Denture delivery") is AppointmentKind.SEAT
    assert services.infer_kind("Seating chart review") is AppointmentKind.OTHER


def test_the_import_only_flushes_so_one_rollback_undoes_all_of_it(world):
    before = _count(AuditEvent)
    report = services.run_import("patients", world.practice.id, sample("patients"), Actor.system("test"))
    assert report.created == 4 and _count(Patient) == 4  # visible inside the transaction
    db.session.rollback()
    assert _count(Patient) == 0 and _count(AuditEvent) == before


def test_other_practice_rows_are_not_touched(world):
    theirs = factories.patient(world.other_practice, first="Keep", last="Me", chart="D1001")
    db.session.commit()
    report = _import(world, "patients", sample("patients"))
    assert report.created == 4
    db.session.refresh(theirs)
    assert (theirs.first_name, theirs.last_name) == ("Keep", "Me")


# ---- the page ----------------------------------------------------------------------------


def test_upload_page_shows_the_report(client, login, world, upload):
    login()
    page = client.get("/people/import?kind=providers").get_data(as_text=True)
    assert '<option selected value="providers">' in page
    response = upload("patients", sample("patients"), "patients.csv")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<html" in html and 'id="import-report"' in html
    assert "<td>9</td><td>4</td><td>0</td><td>0</td>" in html
    for line, reason in PATIENT_REJECTS:
        assert f"<tr><td>{line}</td>" in html
        assert reason in html
    again = upload("patients", sample("patients"), "patients.csv", htmx="import-panel")
    fragment = again.get_data(as_text=True)
    assert again.status_code == 200 and "<html" not in fragment
    assert "<td>9</td><td>0</td><td>0</td><td>4</td>" in fragment


def test_upload_errors_are_422_beside_the_file_field(client, login, world, upload):
    login()
    response = upload("patients", b"", htmx="import-panel")
    assert response.status_code == 422
    assert 'id="file-error">The file is empty. Nothing was imported.' in response.get_data(as_text=True)
    big = b"PatNum,LName,FName\n" + b"1,A,B\n" * (services.MAX_IMPORT_BYTES // 6 + 10)
    response = upload("patients", big)
    assert response.status_code == 422 and "the limit is 5 MB" in response.get_data(as_text=True)
    response = upload("patients", b"", filename=None)
    assert response.status_code == 422 and "Choose a CSV file to upload." in response.get_data(as_text=True)
    response = upload("pets", sample("patients"))
    assert response.status_code == 422
    assert _count(Patient) == 0 and not _audit("patient.import")


def test_upload_needs_csrf_and_an_editor(client, login, world, upload):
    login("manager")
    assert upload("patients", sample("patients")).status_code == 403
    login()
    assert upload("patients", sample("patients"), csrf=False).status_code == 400
    assert _count(Patient) == 0
