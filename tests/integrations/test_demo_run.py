"""What `make run` puts in front of a newcomer (issue 10): the demo lab and the vendor sandbox are
where the demo data points (the ports make run actually uses, not 5055 written into the data), a
case's origin agrees with its scans, the sandbox brings scans at a practice's pace up to a ceiling,
and the demo shows a scan needing confirmation and a strict-vendor milling flow."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select

from portal import devserver
from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.demo import scanners as demo_scanners
from portal.extensions import db
from portal.integrations.vendor import Asset, Jaw, OrderStage, PatientRef, RxItem, Vendor, VendorOrder
from portal.labs.models import Channel, Lab
from portal.people.models import Patient
from portal.scans import services
from portal.scans.models import Scan
from sandbox import vendors as vs
from tests import factories

PASSWORD = "demo-password-for-tests"


# -- the ports make run uses ------------------------------------------------------------------------------

def test_the_helpers_listen_where_the_environment_says_else_on_their_default_when_it_is_free():
    env = {"DEMO_LAB_PORT": "6123"}
    assert devserver.helper_ports(env, free=lambda port: True) == {
        "DEMO_LAB_PORT": 6123, "VENDOR_SANDBOX_PORT": 5056, "OPENDENTAL_SANDBOX_PORT": 5057}
    assert env["VENDOR_SANDBOX_PORT"] == "5056"  # the sandbox is started with it
    assert devserver.demo_lab_url(env) == "http://127.0.0.1:6123"
    assert devserver.sandbox_url(env) == "http://127.0.0.1:5056"


def test_a_default_port_another_copy_holds_is_not_shared():
    env = {}
    ports = devserver.helper_ports(env, free=lambda port: False, pick=iter([40001, 40002, 40003]).__next__)
    assert ports == {"DEMO_LAB_PORT": 40001, "VENDOR_SANDBOX_PORT": 40002, "OPENDENTAL_SANDBOX_PORT": 40003}
    assert env == {"DEMO_LAB_PORT": "40001", "VENDOR_SANDBOX_PORT": "40002", "OPENDENTAL_SANDBOX_PORT": "40003"}


def api_labs() -> list[Lab]:
    db.session.expire_all()
    return list(db.session.scalars(select(Lab).where(Lab.channel == Channel.API)))


def test_seed_demo_points_the_api_lab_at_the_demo_labs_port_and_follows_it_on_the_next_run(app, db):
    runner = app.test_cli_runner()

    first = runner.invoke(args=["seed-demo", "--password", PASSWORD, "--lab-url", "http://127.0.0.1:6123"])
    assert first.exit_code == 0, first.output
    assert [lab.api_url for lab in api_labs()] == ["http://127.0.0.1:6123"]

    again = runner.invoke(args=["seed-demo", "--password", PASSWORD, "--lab-url", "http://127.0.0.1:6124"])
    assert again.exit_code == 0 and "now http://127.0.0.1:6124" in again.output
    [lab] = api_labs()
    assert lab.api_url == "http://127.0.0.1:6124"
    [row] = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "lab.update"))
    assert json.loads(row.before) == {"api_url": "http://127.0.0.1:6123"}
    assert json.loads(row.after) == {"api_url": "http://127.0.0.1:6124"}

    same = runner.invoke(args=["seed-demo", "--password", PASSWORD, "--lab-url", "http://127.0.0.1:6124"])
    assert "nothing changed" in same.output
    # A lab an admin pointed at a real address is not the demo lab's to move.
    lab.api_url = "https://api.keystone.example/v1"
    db.session.commit()
    runner.invoke(args=["seed-demo", "--password", PASSWORD, "--lab-url", "http://127.0.0.1:6125"])
    assert [lab.api_url for lab in api_labs()] == ["https://api.keystone.example/v1"]


# -- a case's origin and its scans agree ------------------------------------------------------------------

@pytest.fixture()
def scanner(world):
    i = factories.integration(world.practice, Vendor.ITERO, labs=[world.labs["email"]])
    db.session.commit()
    return i


def itero_order(patient, order_id="ITERO-77") -> VendorOrder:
    ref = patient if isinstance(patient, PatientRef) else PatientRef(
        patient.first_name, patient.last_name, patient.chart_number, patient.date_of_birth)
    return VendorOrder(Vendor.ITERO, order_id, "Completed", OrderStage.READY, ref,
                       updated_at=dt.datetime(2026, 11, 30, 9), procedure="Crown",
                       items=(RxItem(("36",), "crown", "zirconia", "A2"),),
                       assets=(Asset("a-up", "upper.stl", "STL", jaw=Jaw.UPPER, jaw_source="vendor"),))


def agree() -> list[tuple[str, str, list[str]]]:
    """(case, origin, the vendors of its scans) of every case with a scan whose origin is none of them."""
    db.session.expire_all()
    out = []
    for case in db.session.scalars(select(LabCase)):
        vendors = [s.vendor.value for s in db.session.scalars(select(Scan).where(Scan.case_id == case.id))]
        if vendors and case.origin not in vendors:
            out.append((case.number, case.origin, vendors))
    return out


def test_an_itero_scan_does_not_join_a_draft_that_waits_for_a_medit_order(world, scanner):
    patient = factories.patient(world.practice)
    draft = factories.case(world, patient_obj=patient)
    draft.origin, draft.origin_order_id = "medit", "MEDIT-123"
    db.session.commit()

    result = services.ingest(world.practice.id, itero_order(patient), actor=Actor.vendor(scanner, "test"),
                             source="poll", integration=scanner)
    db.session.commit()

    assert result.case_action == "created" and result.scan.case_id != draft.id
    assert agree() == []
    assert db.session.get(LabCase, draft.id).origin == "medit"  # still waits for its own order


def test_a_scan_put_on_a_case_without_scans_gives_it_its_origin(world, scanner):
    patient = factories.patient(world.practice, "Ana", "Silva", dob=dt.date(1980, 5, 17))
    draft = factories.case(world, patient_obj=patient)
    draft.origin, draft.origin_order_id = "medit", "MEDIT-123"
    db.session.commit()
    # No chart number, no birth date: nobody is matched for sure, the scan waits for a person.
    scan = services.ingest(world.practice.id, itero_order(PatientRef("Ana", "Silva", "", None)),
                           actor=Actor.vendor(scanner, "test"), source="poll", integration=scanner).scan
    db.session.commit()
    assert scan.patient_id is None

    services.assign_case(scan, db.session.get(LabCase, draft.id), Actor.user(world.users["coordinator"]))
    db.session.commit()

    case = db.session.get(LabCase, draft.id)
    assert (case.origin, case.origin_order_id) == ("itero", "ITERO-77")
    row = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "case.scan_linked",
                                                      AuditEvent.entity_id == str(case.id))).one()
    assert json.loads(row.before) == {"origin": "medit", "origin_order_id": "MEDIT-123"}
    assert agree() == []


# -- the sandbox's pace and ceiling -----------------------------------------------------------------------

def made(sandbox) -> int:
    return len(sandbox.itero.orders) + len(sandbox.medit.cases)


def test_the_demo_brings_a_scan_every_five_minutes_and_stops_at_its_ceiling(sandbox):
    patients = [vs.parse_patient(p) for p in vs.DEMO_PATIENTS + demo_scanners.STRANGERS]
    demo = vs.Demo(sandbox.itero, sandbox.medit, patients, step=30)

    demo.tick()
    assert made(sandbox) == 1  # the inbox is not empty for long
    for _ in range(19):
        demo.tick()
    assert made(sandbox) == 2  # ten minutes at 30 s a step
    for _ in range(100):  # the rest of the first hour
        demo.tick()
    assert made(sandbox) == vs.CEILING == 12  # not the 120 a scan every half minute made

    for _ in range(240):  # two more hours: the flows finish, nothing new
        demo.tick()
    assert made(sandbox) == 12 and not demo.flows


def test_the_demo_opens_with_a_scan_to_confirm_and_a_strict_vendor_milling_flow(sandbox):
    patients = [vs.parse_patient(p) for p in vs.DEMO_PATIENTS + demo_scanners.STRANGERS]
    demo = vs.Demo(sandbox.itero, sandbox.medit, patients, step=30, new_every=1)
    for _ in range(3):
        demo.tick()

    first, milling = sorted(sandbox.itero.orders.values(), key=lambda o: o["_t"])[:2]
    assert (first["patient"]["first_name"], first["patient"]["last_name"]) == ("Priya", "Raman")
    assert milling["patient"]["first_name"] == patients[0]["first_name"]
    assert [f[:2] for f in demo.flows][-1] == ("itero", milling["order_id"])
    while demo.flows:
        demo.tick()
    assert [h["status"] for h in sandbox.itero.orders[milling["order_id"]]["history"]] == [
        "Completed", "iTero Modeling", "Lab Review", "iTero Milling", "Ready to Ship", "Downloaded"]


def test_the_demo_practice_knows_priya_raman_only_under_another_birth_date(app, db):
    from portal.demo.seed import seed

    seed(PASSWORD)
    db.session.commit()
    practice = demo_scanners.demo_practice()
    priya = db.session.scalar(select(Patient).where(Patient.practice_id == practice.id, Patient.last_name == "Raman"))
    assert demo_scanners.demo_patients()[-1] == "Priya,Raman,,1990-02-09"
    assert priya.date_of_birth == dt.date(1990, 9, 2)
    # No draft of the demo claims a scanner its scans would contradict.
    drafts = db.session.scalars(select(LabCase).where(LabCase.status == Status.DRAFT))
    assert {c.origin for c in drafts} == {"manual"}

    integration = factories.integration(practice, Vendor.ITERO, labs=[])
    db.session.commit()
    scan = services.ingest(practice.id, itero_order(PatientRef("Priya", "Raman", "", dt.date(1990, 2, 9))),
                           actor=Actor.vendor(integration, "test"), source="poll", integration=integration).scan
    assert scan.patient_id is None  # waits for a person
    with pytest.raises(services.NeedsConfirmation, match="the birth date differs"):
        services.assign_patient(scan, priya, Actor.system("test"))
