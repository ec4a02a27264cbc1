"""A coordinator matches a scan that waits in the inbox to a patient, in a real Chromium: the
row's menu loads the patient choices, the search narrows them, the match swaps the row in place
(htmx) with the new case, the top bar's count drops, and the case page lists the scan."""
from __future__ import annotations

import datetime as dt
import os

import pytest
from playwright.sync_api import expect

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.extensions import db
from portal.integrations.vendor import Asset, Jaw, OrderStage, PatientRef, RxItem, Vendor, VendorOrder
from portal.scans import services
from tests import factories

pytestmark = pytest.mark.browser
SHOTS = os.environ.get("LM_SCREENSHOTS", "")  # a folder: the tests save what they saw there


def test_matching_a_waiting_scan_to_a_patient_puts_it_on_a_new_case(page, signed_in, live_server, world):
    scanner = factories.integration(world.practice, Vendor.ITERO, labs=[world.labs["email"]])
    factories.patient(world.practice, "Noor", "Haddad", chart="H-1")
    patient = factories.patient(world.practice, "Nora", "Okafor", chart="OK-7")
    db.session.commit()
    order = VendorOrder(
        Vendor.ITERO, "ORD-B1", "Completed", OrderStage.READY,
        PatientRef("Nora", "Okafor-Smith", "", dt.date(1980, 5, 17)), updated_at=dt.datetime(2026, 11, 30, 9),
        doctor_name="Dr. Test", procedure="Crown", items=(RxItem(("36",), "crown", "zirconia", "A2"),),
        assets=(Asset("a-up", "upper.stl", "STL", jaw=Jaw.UPPER, jaw_source="vendor"),
                Asset("a-lo", "lower.stl", "STL", jaw=Jaw.LOWER, jaw_source="vendor")))
    scan = services.ingest(world.practice.id, order, actor=Actor.vendor(scanner, "test"), source="poll",
                           integration=scanner).scan
    db.session.commit()
    assert scan.patient_id is None  # the scanner's name does not match anybody for sure

    signed_in(page, world.users["coordinator"], "/scans/")
    expect(page.locator("#pending-scans .nav-count")).to_have_text("1")
    row = page.locator(f"#scan-{scan.id}")
    expect(row).to_contain_text("Nora Okafor-Smith")
    page.evaluate("window.stillThisPage = true")  # gone if the browser loaded a new page

    row.get_by_text("Match patient…").click()
    menu = row.locator(".row-menu[open] .menu-body")
    search = menu.get_by_label("Search name or chart number")
    search.fill("okafor")
    expect(menu.locator(".patient-options")).to_contain_text("Okafor, Nora")
    expect(menu.locator(".patient-options")).not_to_contain_text("Haddad")
    menu.get_by_label("Okafor, Nora").check()
    menu.get_by_role("button", name="Match to this patient").click()

    # "Okafor-Smith" is not "Okafor": the row asks first, both side by side, and nothing has changed.
    question = row.get_by_role("alertdialog", name="Is this the same person?")
    expect(question).to_be_visible()
    expect(question.locator("tr.differs")).to_have_count(1)
    expect(question.locator("tr.differs")).to_contain_text("Nora Okafor-Smith")
    expect(question.locator("tr.differs")).to_contain_text("Nora Okafor")
    expect(question.locator("tr.same", has_text="Birth date")).to_contain_text("17 May 1980")
    db.session.expire_all()
    assert db.session.get(type(scan), scan.id).patient_id is None
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/scan-inbox-confirm.png", full_page=True)
    question.get_by_role("button", name="Yes, match to Nora Okafor").click()

    expect(row).to_contain_text("Matched to Nora Okafor.")
    expect(row.get_by_role("alertdialog")).to_have_count(0)
    db.session.expire_all()
    scan = db.session.get(type(scan), scan.id)
    assert scan.patient_id == patient.id and scan.case_id is not None
    expect(row.get_by_role("link", name=scan.case.number)).to_be_visible()
    expect(page.locator("#pending-scans .nav-count")).to_have_count(0)  # nothing waits any more
    assert page.evaluate("window.stillThisPage") is True
    audit = db.session.scalars(db.select(AuditEvent.action).where(AuditEvent.entity_type == "scan",
                                                                  AuditEvent.entity_id == str(scan.id))).all()
    assert "scan.match_override" in audit and "scan.matched" not in audit

    row.get_by_role("link", name=scan.case.number).click()
    panel = page.locator("#scans")
    expect(panel).to_contain_text("ORD-B1")
    expect(panel.locator(".chip.jaw-upper")).to_be_visible()
