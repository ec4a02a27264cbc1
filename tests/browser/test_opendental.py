"""Open Dental in a real Chromium: an admin links the PMS's laboratory on the integration's page,
a coordinator sees the case's lab case in Open Dental fail with the reason and retries it. The
pages pass axe and the CSP (no script errors); with LM_SCREENSHOTS set the tests save what they saw."""
from __future__ import annotations

import datetime as dt
import os

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from portal.audit.actor import Actor
from portal.cases import lifecycle
from portal.cases.status import Status
from portal.dispatch.models import DispatchState
from portal.extensions import db
from portal.integrations import writeback
from portal.integrations.models import PmsLabCase, PmsLaboratory
from portal.integrations.sync import run_sync
from portal.people.models import Patient, Provider
from tests import factories
from tests.browser.conftest import axe_violations
from tests.integrations.opendental_support import od_integration

pytestmark = pytest.mark.browser
SHOTS = os.environ.get("LM_SCREENSHOTS", "")


@pytest.fixture()
def od():
    from sandbox.opendental import OpenDentalSandbox

    with OpenDentalSandbox() as server:
        yield server


def shot(page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, name), full_page=True)


def test_an_admin_links_a_laboratory_and_a_coordinator_retries_a_refused_write(page, signed_in, world, od):
    od.seed(patients=40, appointments=60, providers=2, laboratories=2)
    integration = od_integration(world.practice, od.base_url)
    run_sync(integration.id)

    signed_in(page, world.users["admin"], "/admin/scanners/")
    expect(page.get_by_role("heading", name="Practice management system")).to_be_visible()
    shot(page, "integrations-settings.png")
    page.get_by_role("link", name="Front desk Open Dental").click()
    expect(page.get_by_role("heading", name="Laboratories")).to_be_visible()
    laboratory = db.session.scalar(select(PmsLaboratory).where(PmsLaboratory.ref == "2"))
    page.select_option(f"#lab-{laboratory.id}", label=world.lab.name)
    with page.expect_navigation():
        page.locator(f"#lab-{laboratory.id}").locator("xpath=..").get_by_role("button", name="Save").click()
    expect(page.locator(".flash, .toast, [role=status]").first).to_contain_text("linked")
    assert axe_violations(page) == []
    shot(page, "integration-opendental.png")
    db.session.expire_all()
    assert db.session.get(PmsLaboratory, laboratory.id).lab_id == world.lab.id

    patient = db.session.scalar(select(Patient).where(Patient.external_id == "1"))
    case = factories.case(world, Status.DRAFT, patient_obj=patient, due=dt.date.today() + dt.timedelta(days=8))
    case.provider_id = db.session.scalar(select(Provider.id).where(Provider.external_id == "1"))
    db.session.commit()
    od.fault("labcase_create", "400")
    lifecycle.move(case, Status.SENT, actor=Actor.user(world.users["coordinator"]))
    db.session.commit()
    row = db.session.scalar(select(PmsLabCase).where(PmsLabCase.case_id == case.id))
    assert writeback.deliver(row.id) == "failed"

    page.context.clear_cookies()  # the admin signs out; the coordinator signs in
    signed_in(page, world.users["coordinator"], f"/cases/{case.id}")
    panel = page.locator("#pms-panel")
    expect(panel).to_contain_text("did not go through")
    expect(panel).to_contain_text("Invalid request")
    shot(page, "case-pms-failed.png")
    with page.expect_navigation():
        panel.get_by_role("button", name="Retry").click()
    db.session.expire_all()
    assert db.session.get(PmsLabCase, row.id).state is DispatchState.PENDING
    assert writeback.deliver(row.id) == "written"
    page.reload()
    expect(panel).to_contain_text("went through")
    expect(panel).to_contain_text(f"#{od.rows('labcases')[0]['LabCaseNum']}")
    assert axe_violations(page) == []
    shot(page, "case-pms-written.png")
