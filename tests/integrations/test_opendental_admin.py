"""Settings → Integrations for Open Dental: keys sealed and write-only, the base URL checked, Test
connection and Sync now, patients waiting for a person, laboratories linked once."""
from __future__ import annotations


from sqlalchemy import select

from portal import keyring as crypto
from portal import outbound
from portal.audit.models import AuditEvent
from portal.extensions import db
from portal.integrations.models import PmsLaboratory, PmsMatch, ScannerIntegration
from portal.integrations.sync import run_sync
from portal.integrations.vendor import Vendor
from portal.people.models import Patient
from sandbox.opendental import DEMO_CUSTOMER_KEY, DEMO_DEVELOPER_KEY
from tests import factories
from tests.integrations.opendental_support import audit_count, od_integration


def _form(od, **changes):
    data = {"name": "Front desk Open Dental", "developer_key": DEMO_DEVELOPER_KEY, "customer_key": DEMO_CUSTOMER_KEY,
            "base_url": od.base_url, "clinic_num": ""}
    data.update(changes)
    return data


def test_an_admin_adds_open_dental_keys_are_sealed_and_never_shown(client, login, world, od):
    login("admin")
    page = client.get("/admin/scanners/").get_data(as_text=True)
    assert "Practice management system" in page and "Add Open Dental" in page
    created = client.post("/admin/scanners/new?vendor=opendental", _form(od))
    assert created.status_code == 303, created.get_data(as_text=True)
    i = db.session.scalar(select(ScannerIntegration).where(ScannerIntegration.vendor == Vendor.OPENDENTAL))
    assert DEMO_CUSTOMER_KEY not in i.credentials and crypto.unseal(i.credentials)["customer_key"] == DEMO_CUSTOMER_KEY
    shown = client.get(f"/admin/scanners/{i.id}").get_data(as_text=True)
    assert DEMO_CUSTOMER_KEY not in shown and DEMO_DEVELOPER_KEY not in shown
    edit = client.get(f"/admin/scanners/{i.id}/edit").get_data(as_text=True)
    assert DEMO_CUSTOMER_KEY not in edit
    rows = db.session.scalars(select(AuditEvent).where(AuditEvent.entity_type == "scanner_integration")).all()
    assert rows and all(DEMO_CUSTOMER_KEY not in (r.after or "") + (r.before or "") for r in rows)
    tested = client.post(f"/admin/scanners/{i.id}/test").get_data(as_text=True)
    assert "the keys work" in tested
    db.session.expire_all()
    assert db.session.get(ScannerIntegration, i.id).connected
    assert client.get("/admin/integrations/").status_code == 301  # the label's own address


def test_a_bad_key_says_so_and_changes_nothing(client, login, world, od):
    i = od_integration(world.practice, od.base_url, customer="wrong")
    login("admin")
    before = audit_count()
    tested = client.post(f"/admin/scanners/{i.id}/test").get_data(as_text=True)
    assert "refused our credentials (HTTP 401)" in tested
    db.session.expire_all()
    assert not db.session.get(ScannerIntegration, i.id).connected
    assert audit_count() == before


def test_a_foreign_base_url_is_refused_in_production(client, login, world, od, app, monkeypatch):
    monkeypatch.setitem(app.config, "DEVELOPMENT", False)
    monkeypatch.setitem(app.config, "OUTBOUND_ALLOWED_HOSTS", "")
    outbound.close_client()
    login("admin")
    before = audit_count()
    refused = client.post("/admin/scanners/new?vendor=opendental", _form(od, base_url="https://od.evil.example/api/v1"))
    assert refused.status_code == 422
    assert "not on the allowed vendor hosts" in refused.get_data(as_text=True)
    loopback = client.post("/admin/scanners/new?vendor=opendental", _form(od))  # the sandbox: 127.0.0.1
    assert loopback.status_code == 422
    assert db.session.scalar(select(ScannerIntegration.id)) is None and audit_count() == before
    outbound.close_client()


def test_a_person_resolves_a_waiting_patient_and_links_a_laboratory(client, login, world, od):
    import datetime as dt

    for chart in ("X1", "X2"):
        factories.patient(world.practice, "Cara", "Lind", chart=chart).date_of_birth = dt.date(1970, 3, 3)
    db.session.commit()
    od.add("patients", FName="Cara", LName="Lind", Birthdate="1970-03-03")
    od.add("laboratories", Description="Northside", Phone="", Email="", IsHidden="false")
    i = od_integration(world.practice, od.base_url)
    run_sync(i.id)
    login("admin")
    page = client.get(f"/admin/scanners/{i.id}").get_data(as_text=True)
    assert "Patients waiting for a person" in page and "Northside" in page
    match = db.session.scalar(select(PmsMatch))
    chosen = match.candidate_ids[1]
    assert client.post(f"/admin/scanners/{i.id}/matches/{match.id}", {"patient_id": chosen}).status_code == 303
    db.session.expire_all()
    assert db.session.get(Patient, chosen).external_id == "1"
    assert client.post(f"/admin/scanners/{i.id}/matches/{match.id}", {"patient_id": chosen}).status_code == 409
    row = db.session.scalar(select(PmsLaboratory))
    assert client.post(f"/admin/scanners/{i.id}/laboratories/{row.id}", {"lab_id": world.lab.id}).status_code == 303
    db.session.expire_all()
    assert db.session.get(PmsLaboratory, row.id).lab_id == world.lab.id
    assert audit_count("pms.laboratory_linked") == 1 and audit_count("pms.match_resolved") == 1


def test_the_demo_practice_connects_to_the_open_dental_sandbox(app, world, od, queue):
    from portal.demo import opendental as demo_od
    from portal.demo import scanners as demo
    from portal.practices.models import Practice
    from sandbox.opendental import demo as sandbox_demo

    practice = db.session.get(Practice, world.practice.id)
    practice.name = demo.PRACTICE
    known = factories.patient(practice, "Ava", "Nguyen")
    db.session.commit()
    people = [dict(zip(("first_name", "last_name", "chart_number", "date_of_birth"), (t.split(",") + [""])[:4]))
              for t in demo.demo_patients()]
    sandbox_demo(od.store, people)
    done = demo_od.connect(od.base_url)
    assert done[0].startswith("Front desk Open Dental: Open Dental answered") and "linked to" in done[1]
    again = demo_od.connect(od.base_url)  # the next make run: the same integration, nothing linked twice
    assert len(db.session.scalars(select(ScannerIntegration)).all()) == 1 and "linked to" not in " ".join(again)
    db.session.expire_all()
    linked = db.session.scalars(select(Patient).where(Patient.chart_number == known.chart_number)).all()
    assert len(linked) == 1 and linked[0].external_id  # the same patient, now with its PatNum
    assert db.session.scalar(select(PmsLaboratory.lab_id)) is not None
