"""Every page of the portal in a real Chromium, as the people who use it: no Content-Security-Policy
refusal in the console (an inline style or handler the CSP blocks silently does not happen) and
no axe-core violation (WCAG 2.x A/AA and best practices, every impact)."""
from __future__ import annotations

import datetime as dt

import pytest
from playwright.sync_api import expect

from jobs import mail as mail_job
from portal.audit.actor import Actor
from portal.cases.lifecycle import Status
from portal.extensions import db
from portal.integrations.vendor import Asset, Jaw, OrderStage, PatientRef, RxItem, Vendor, VendorOrder
from portal.scans import services as scans
from tests import factories
from tests.ack.conftest import send_to_email_lab
from tests.browser.conftest import axe_violations, is_csp_refusal, log_in

pytestmark = pytest.mark.browser


@pytest.fixture()
def everything(world, app, live_server, monkeypatch):
    """A little of everything: cases in several columns, one at seat risk, a scan waiting for a
    person, a scanner, a work order emailed to a lab (its mail and its private link)."""
    monkeypatch.setitem(app.config, "PUBLIC_BASE_URL", live_server.url)
    soon = dt.date.today() + dt.timedelta(days=3)
    draft = factories.case(world, Status.DRAFT, seat=soon)
    factories.case(world, Status.ON_HOLD)
    factories.case(world, Status.DISPATCHED)
    sent = send_to_email_lab(world, due=dt.date.today() + dt.timedelta(days=9))
    mail_job.send(sent.mail.id)
    scanner = factories.integration(world.practice, Vendor.ITERO, labs=[world.labs["email"]])
    db.session.commit()
    order = VendorOrder(
        Vendor.ITERO, "ORD-P1", "Completed", OrderStage.READY,
        PatientRef("Nora", "Nobody", "", dt.date(1980, 5, 17)), updated_at=dt.datetime(2026, 11, 30, 9),
        doctor_name="Dr. Test", procedure="Crown", items=(RxItem(("36",), "crown", "zirconia", "A2"),),
        assets=(Asset("a-up", "upper.stl", "STL", jaw=Jaw.UPPER, jaw_source="vendor"),))
    scan = scans.ingest(world.practice.id, order, actor=Actor.vendor(scanner, "test"), source="poll",
                        integration=scanner).scan
    db.session.commit()
    return {"draft": draft, "sent": sent, "scan": scan, "scanner": scanner, "mail": sent.mail}


def _coordinator_pages(w, e) -> list[str]:
    d, patient = e["draft"], e["draft"].patient
    return [
        "/", "/?lab=none", f"/board/column/draft", "/cases/new", f"/cases/{d.id}", f"/cases/{d.id}/edit",
        f"/cases/{d.id}/send", f"/cases/{d.id}/slip", f"/cases/{d.id}/label", "/risk", "/day",
        "/scans/", f"/scans/{e['scan'].id}", "/scans/upload", "/patients", f"/patients/{patient.id}",
        "/patients/new", f"/patients/{patient.id}/edit", "/providers", "/providers/new", "/appointments",
        "/appointments/new", "/people/import", "/labs/", f"/labs/{w.labs['api'].id}", "/messages",
        "/dev/mailbox/", f"/dev/mailbox/{e['mail'].id}", "/cases/find?number=LC-NOPE",
    ]


def _admin_pages(w, e) -> list[str]:
    return ["/audit/", "/labs/new", f"/labs/{w.labs['email'].id}/edit", "/admin/practice", "/admin/users/",
            "/admin/scanners/", f"/admin/scanners/{e['scanner'].id}", "/reports/", "/reports/cases"]


def watched(context):
    """A page, and the CSP refusals its console reports (emptied by check() for each page)."""
    page = context.new_page()
    refused: list[str] = []
    page.on("console", lambda msg: refused.append(msg.text) if is_csp_refusal(msg) else None)
    return page, refused


def check(page, refused: list[str], url: str) -> list[str]:
    refused.clear()
    response = page.goto(url)
    page.wait_for_load_state("networkidle")
    problems = [f"CSP: {text}" for text in refused]
    if response is not None and response.status >= 500:
        problems.append(f"HTTP {response.status}")
    return problems + axe_violations(page)


def _sweep(context, live_server, user, paths) -> dict[str, list[str]]:
    page, refused = watched(context)
    log_in(page, live_server, user)
    found = {}
    for path in paths:
        problems = check(page, refused, live_server(path))
        if problems:
            found[path] = problems
    return found


def _report(found: dict[str, list[str]]) -> str:
    return "\n".join(f"{path}:\n  " + "\n  ".join(problems) for path, problems in found.items())


def test_every_coordinator_page_is_clean(context, live_server, world, everything):
    found = _sweep(context, live_server, world.users["coordinator"], _coordinator_pages(world, everything))
    assert not found, _report(found)


def test_every_admin_and_manager_page_is_clean(context, live_server, world, everything):
    found = _sweep(context, live_server, world.users["admin"], _admin_pages(world, everything))
    assert not found, _report(found)


def test_signed_out_pages_are_clean(context, live_server, world, everything):
    page, refused = watched(context)
    found = {}
    for url in (live_server("/login"), live_server(f"/lab/{everything['sent'].token}")):
        problems = check(page, refused, url)
        if problems:
            found[url] = problems
    expect(page.get_by_role("heading", name=everything["sent"].case.number)).to_be_visible()
    assert not found, _report(found)
