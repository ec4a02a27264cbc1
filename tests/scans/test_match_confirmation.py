"""A person matching a scan to a patient whose name or birth date is not the scanner's is asked
first, with both side by side; nothing changes until they confirm, and the confirmed match is
audited as an override (issue 10: "Priya Raman, 09 Feb 1990" was matched with one click to "Park,
Henry, 18 May 1992", and a draft case followed). With htmx (the inbox row) and without (the scan's
page), for "Match patient" and for "Put on a case"."""
from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from sqlalchemy import func, select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases.models import LabCase
from portal.extensions import db
from portal.integrations.vendor import Asset, Jaw, OrderStage, PatientRef, RxItem, Vendor, VendorOrder
from portal.scans import services
from portal.scans.models import InboxState, Scan
from tests import factories

T0 = dt.datetime(2026, 11, 30, 9, 0)


@pytest.fixture()
def scanner(world):
    i = factories.integration(world.practice, Vendor.ITERO, labs=[world.labs["email"]])
    db.session.commit()
    return i


def scan_of(world, scanner, ref: PatientRef, order_id="ORD-PR") -> Scan:
    order = VendorOrder(Vendor.ITERO, order_id, "Completed", OrderStage.READY, ref, updated_at=T0,
                        doctor_name="Dr. Test", procedure="Crown", items=(RxItem(("36",), "crown", "zirconia", "A2"),),
                        assets=(Asset("a-up", "upper.stl", "STL", jaw=Jaw.UPPER, jaw_source="vendor"),))
    scan = services.ingest(world.practice.id, order, actor=Actor.vendor(scanner, "test"), source="poll",
                           integration=scanner).scan
    db.session.commit()
    return scan


@pytest.fixture()
def priya(world, scanner):
    """The scan of the issue: Priya Raman, 09 Feb 1990, nobody of that name at the practice."""
    return scan_of(world, scanner, PatientRef("Priya", "Raman", "", dt.date(1990, 2, 9)))


@pytest.fixture()
def henry(world):
    patient = factories.patient(world.practice, "Henry", "Park", chart="D1001", dob=dt.date(1992, 5, 18))
    db.session.commit()
    return patient


def audit_rows() -> int:
    return db.session.scalar(select(func.count(AuditEvent.id)))


def cases() -> int:
    return db.session.scalar(select(func.count(LabCase.id)))


def actions(scan) -> list[str]:
    return list(db.session.scalars(select(AuditEvent.action).where(
        AuditEvent.entity_type == "scan", AuditEvent.entity_id == str(scan.id)).order_by(AuditEvent.seq)))


def side_by_side(body: str) -> None:
    """Both sides on the page, what differs said in words."""
    assert "Is this the same person?" in body
    rows = re.findall(r'<tr class="(differs|same)"><th scope="row">([^<]+)</th><td>([^<]+)</td><td>([^<]+)</td>', body)
    assert [(cls, label, scanner, record) for cls, label, scanner, record in rows] == [
        ("differs", "Name", "Priya Raman", "Henry Park"),
        ("differs", "Birth date", "09 Feb 1990", "18 May 1992"),
        ("same", "Chart number", "not given", "D1001"),
    ]
    assert body.count(">differs</span>") == 2


def test_a_match_to_someone_else_asks_first_in_the_row_and_changes_nothing(client, login, world, priya, henry):
    login()
    before = (audit_rows(), cases())

    response = client.post(f"/scans/{priya.id}/patient", {"patient_id": henry.id}, htmx=f"scan-{priya.id}")

    body = response.get_data(as_text=True)
    assert response.status_code == 200 and body.lstrip().startswith(f'<tbody id="scan-{priya.id}"')
    side_by_side(body)
    # The confirmation posts the same choice again, with confirm=1, into the same row.
    form = re.search(r'<form method="post" action="/scans/%d/patient" class="inline" hx-post="/scans/%d/patient" '
                     r'hx-target="#scan-%d" hx-swap="outerHTML">(.*?)</form>' % (priya.id, priya.id, priya.id), body, re.S)
    assert form and f'name="patient_id" value="{henry.id}"' in form.group(1)
    assert 'name="confirm" value="1"' in form.group(1) and "Yes, match to Henry Park" in form.group(1)
    assert f'hx-get="/scans/{priya.id}/row"' in body  # "No" puts the row back as it was
    db.session.expire_all()
    scan = db.session.get(Scan, priya.id)
    assert scan.patient_id is None and scan.case_id is None and scan.inbox is InboxState.PENDING
    assert (audit_rows(), cases()) == before

    back = client.hx(f"/scans/{priya.id}/row", target=f"scan-{priya.id}").get_data(as_text=True)
    assert back.lstrip().startswith(f'<tbody id="scan-{priya.id}"') and "Is this the same person?" not in back


def test_a_confirmed_match_goes_through_and_is_audited_as_an_override(client, login, world, priya, henry):
    login()
    response = client.post(f"/scans/{priya.id}/patient", {"patient_id": henry.id, "confirm": "1"},
                           htmx=f"scan-{priya.id}")

    assert response.status_code == 200 and "Matched to Henry Park." in response.get_data(as_text=True)
    db.session.expire_all()
    scan = db.session.get(Scan, priya.id)
    assert scan.patient_id == henry.id and scan.case_id is not None and scan.matched_by == "person"
    assert "scan.matched" not in actions(scan)
    [row] = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "scan.match_override"))
    after = json.loads(row.after)
    assert row.outcome == "override" and row.actor_label == world.users["coordinator"].email
    assert after["override"] is True and after["differs"] == ["name", "birth date"]
    assert after["scanner"] == {"name": "Priya Raman", "birth date": "09 Feb 1990", "chart number": "not given"}
    assert after["record"] == {"name": "Henry Park", "birth date": "18 May 1992", "chart number": "D1001"}
    page = client.get(f"/scans/{scan.id}").get_data(as_text=True)
    assert "confirmed although the name and birth date differed" in page


def test_without_htmx_the_scans_page_asks_and_the_confirmation_redirects(client, login, world, priya, henry):
    login()
    before = (audit_rows(), cases())

    response = client.post(f"/scans/{priya.id}/patient", {"patient_id": henry.id})

    body = response.get_data(as_text=True)
    assert response.status_code == 200 and "<html" in body
    side_by_side(body)
    assert re.search(r'<form method="post" action="/scans/%d/patient" class="inline">' % priya.id, body)
    assert (audit_rows(), cases()) == before

    done = client.post(f"/scans/{priya.id}/patient", {"patient_id": henry.id, "confirm": "1"})
    assert done.status_code == 303
    db.session.expire_all()
    assert db.session.get(Scan, priya.id).patient_id == henry.id
    assert "scan.match_override" in actions(priya)


def test_putting_an_unmatched_scan_on_another_patients_case_asks_too(client, login, world, priya, henry):
    case = factories.case(world, patient_obj=henry, lab=world.labs["email"])
    db.session.commit()
    login()
    before = (audit_rows(), cases())

    asked = client.post(f"/scans/{priya.id}/case", {"case_id": case.id}, htmx=f"scan-{priya.id}")
    body = asked.get_data(as_text=True)
    side_by_side(body)
    assert f"(the patient of {case.number})" in body
    assert f'name="case_id" value="{case.id}"' in body and 'name="confirm" value="1"' in body
    assert (audit_rows(), cases()) == before
    db.session.expire_all()
    assert db.session.get(Scan, priya.id).case_id is None

    client.post(f"/scans/{priya.id}/case", {"case_id": case.id, "confirm": "1"}, htmx=f"scan-{priya.id}")
    db.session.expire_all()
    scan = db.session.get(Scan, priya.id)
    assert (scan.case_id, scan.patient_id) == (case.id, henry.id)
    assert actions(scan)[-1] == "scan.match_override"


@pytest.mark.parametrize("ref", [
    PatientRef("HENRY ", " park", "", dt.date(1992, 5, 18)),   # case and spaces
    PatientRef("", "Henry Park", "", dt.date(1992, 5, 18)),    # 3Shape's whole name in the last name
    PatientRef("Henry", "Park", "MEDIT-77", None),             # Medit sends no birth date
])
def test_the_same_name_written_otherwise_is_matched_without_a_question(client, login, world, scanner, ref):
    scan = scan_of(world, scanner, ref)
    henry = factories.patient(world.practice, "Henry", "Park", chart="D1001", dob=dt.date(1992, 5, 18))
    db.session.commit()  # added after the scan came in, so a person matches it
    login()
    response = client.post(f"/scans/{scan.id}/patient", {"patient_id": henry.id}, htmx=f"scan-{scan.id}")
    assert "Is this the same person?" not in response.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Scan, scan.id).patient_id == henry.id
    assert "scan.matched" in actions(scan) and "scan.match_override" not in actions(scan)


def test_accents_and_punctuation_are_the_same_name_a_different_surname_is_not(world, scanner):
    patient = factories.patient(world.practice, "Zoë", "Müller-Okafor", dob=dt.date(1990, 2, 3))
    scan = scan_of(world, scanner, PatientRef("zoe", "MULLER OKAFOR", "", dt.date(1990, 3, 2)))
    lines = services.compare_patient(scan, patient)
    assert [(line.label, line.differs) for line in lines] == [
        ("Name", False), ("Birth date", True), ("Chart number", False)]
    scan.patient_last_name = "Okafor"
    assert services.compare_patient(scan, patient)[0].differs
    with pytest.raises(services.NeedsConfirmation, match=r"the name and birth date differ"):
        services.assign_patient(scan, patient, Actor.user(world.users["coordinator"]))


def test_when_two_patients_have_the_scanners_name_and_birth_date_the_inbox_says_so_and_offers_both(
        client, login, world, scanner):
    """Issue 9: the inbox said no patient matches; two do."""
    twins = [factories.patient(world.practice, "Sam", "Lee", chart=f"L-{n}", dob=dt.date(1985, 1, 1)) for n in (1, 2)]
    factories.patient(world.practice, "Sam", "Leeds", dob=dt.date(1985, 1, 1))
    db.session.commit()

    scan = scan_of(world, scanner, PatientRef("Sam", "Lee", "", dt.date(1985, 1, 1)))

    assert scan.patient_id is None and scan.inbox is InboxState.PENDING
    assert scan.problem == ("2 patients of this practice have this name and birth date (Lee, Sam · chart L-1; "
                            "Lee, Sam · chart L-2): choose the right one.")
    login()
    for body in (client.get("/scans/").get_data(as_text=True),
                 client.get(f"/scans/{scan.id}").get_data(as_text=True)):
        assert "2 patients of this practice have this name and birth date" in body
    options = client.hx(f"/scans/{scan.id}/patients?q=sam").get_data(as_text=True)
    offered = re.findall(r'name="patient_id" value="(\d+)"', options)
    assert offered[:2] == [str(p.id) for p in twins]  # both, first
    assert options.count("same name and birth date") == 2 and "checked" not in options
    page = client.get(f"/scans/{scan.id}?q=nobody-typed-this").get_data(as_text=True)
    assert all(f'name="patient_id" value="{p.id}"' in page for p in twins)  # offered whatever was typed

    client.post(f"/scans/{scan.id}/patient", {"patient_id": twins[1].id}, htmx=f"scan-{scan.id}")
    db.session.expire_all()
    assert db.session.get(Scan, scan.id).patient_id == twins[1].id  # no question: it is her name and birth date
