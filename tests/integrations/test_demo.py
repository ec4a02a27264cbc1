"""`make run`'s scanners: the demo practice's iTero and Medit integrations connect to the vendor
sandbox through the admin services, and scans then arrive by callback, webhook and poll."""
from __future__ import annotations

from sqlalchemy import select

from portal.demo import scanners as demo
from sandbox import vendors as vs
from portal.extensions import db
from portal.integrations.models import ScannerIntegration
from portal.integrations.vendor import Vendor
from portal.practices.models import Practice
from portal.scans.models import Scan
from tests import factories
from tests.jobs import drain


def test_the_demo_scanners_connect_to_the_sandbox_and_scans_arrive(app, world, sandbox, live, queue):
    practice = db.session.get(Practice, world.practice.id)
    practice.name = demo.PRACTICE
    patient = factories.patient(practice, "Ava", "Nguyen")
    db.session.commit()
    for vendor, client_id, secret in (("itero", vs.ITERO_DEMO_CLIENT_ID, vs.ITERO_DEMO_CLIENT_SECRET),
                                      ("medit", vs.MEDIT_DEMO_CLIENT_ID, vs.MEDIT_DEMO_CLIENT_SECRET)):
        sandbox.add_client(vendor, client_id, secret)

    assert patient.chart_number in ";".join(demo.demo_patients())
    done = demo.connect(sandbox.url)
    again = demo.connect(sandbox.url)  # the next `make run`: the same two integrations, signed in afresh

    assert done == again and done[:2] == ["Front desk iTero: connected", "Surgery 2 Medit i700: connected"]
    integrations = {i.vendor: i for i in db.session.scalars(select(ScannerIntegration))}
    assert set(integrations) == {Vendor.ITERO, Vendor.MEDIT}
    assert all(i.connected and i.labs for i in integrations.values())
    drain(queue)  # the first syncs: nothing at the vendor yet

    ref = {"first_name": patient.first_name, "last_name": patient.last_name, "chart_number": patient.chart_number}
    order = sandbox.add_itero_order(patient=ref)
    case = sandbox.add_medit_case(patient={"name": patient.full_name, "code": patient.chart_number},
                                  status="COMPLETED", upload_status="SUCCEED")
    sandbox.drain()
    drain(queue)

    scans = {s.vendor: s for s in db.session.scalars(select(Scan))}
    assert scans[Vendor.ITERO].order_id == order["order_id"] and scans[Vendor.MEDIT].order_id == case["uuid"]
    assert {s.patient_id for s in scans.values()} == {patient.id} and all(s.case_id for s in scans.values())
