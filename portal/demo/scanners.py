"""`make run`'s scanners: an iTero and a Medit Link integration of the demo practice, connected to
the vendor sandbox (sandbox/vendors.py) the way an admin would connect them, so scans
arrive in the inbox while the demo runs.

The sandbox keeps its state in memory: each start of `make run` signs in and pairs again (the old
tokens died with the old sandbox). Everything goes through the same services as the admin pages,
audited as the system's "demo set-up".
"""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
from flask import current_app, url_for
from sqlalchemy import select

from portal.audit.actor import Actor
from portal.extensions import db
from portal.integrations import services as admin
from portal.integrations import sync
from portal.integrations.models import ScannerIntegration
from portal.integrations.vendor import Vendor
from portal.labs.models import Lab
from portal.people.models import Appointment, AppointmentKind, Patient
from portal.practices.models import Practice, utcnow
from portal.tokens import public_url

PRACTICE = "Bright Smiles Downtown"
# Scanner patients the demo practice does not know for sure: their scans wait in the inbox for a
# person. The practice has a Priya Raman born 02 Sep 1990 (portal/demo/seed.py): matching this scan
# to her asks to confirm the birth date. She comes last: the sandbox's first scan is hers.
STRANGERS = ["Jordan,Ellison,X-7781,1983-06-14", "Priya,Raman,,1990-02-09"]


def demo_practice() -> Practice | None:
    return db.session.scalar(select(Practice).where(Practice.name == PRACTICE))


def demo_patients(count: int = 8) -> list[str]:
    """"First,Last,Chart,YYYY-MM-DD[,YYYY-MM-DD HH:MM]" of some demo patients (the last: their next
    seat appointment, which the Open Dental sandbox books at the same time), and two the practice
    does not know."""
    practice = demo_practice()
    if practice is None:
        return STRANGERS
    patients = db.session.scalars(select(Patient).where(Patient.practice_id == practice.id)
                                  .order_by(Patient.id).limit(count))
    known = []
    for p in patients:
        seat = db.session.scalar(select(Appointment.starts_at).where(
            Appointment.patient_id == p.id, Appointment.kind == AppointmentKind.SEAT,
            Appointment.starts_at >= utcnow()).order_by(Appointment.starts_at).limit(1))
        known.append(f"{p.first_name},{p.last_name},{p.chart_number},{p.date_of_birth or ''}"
                     + (f",{seat:%Y-%m-%d %H:%M}" if seat else ""))
    return known + STRANGERS


def connect(sandbox_url: str) -> list[str]:
    """Create (once) and connect the demo integrations; returns what was done, a line each."""
    # make run only: the sandbox (and its demo clients) sits beside the package in the checkout.
    from sandbox import vendors as vs

    practice = demo_practice()
    if practice is None:
        return ["no demo practice: run flask seed-demo first"]
    actor = Actor.system("demo set-up")
    base = sandbox_url.rstrip("/")
    done = []
    itero = _integration(practice, Vendor.ITERO, "Front desk iTero", {
        "client_id": vs.ITERO_DEMO_CLIENT_ID, "client_secret": vs.ITERO_DEMO_CLIENT_SECRET,
        "base_url": f"{base}/itero", "oauth_base": f"{base}/itero/oauth"}, actor)
    medit = _integration(practice, Vendor.MEDIT, "Surgery 2 Medit i700", {
        "client_id": vs.MEDIT_DEMO_CLIENT_ID, "client_secret": vs.MEDIT_DEMO_CLIENT_SECRET,
        "auth_host": f"{base}/medit", "resource_host": f"{base}/medit",
        "webhook_secret": vs.MEDIT_DEMO_WEBHOOK_SECRET}, actor)
    db.session.commit()
    for integration in (itero, medit):
        _sign_in(integration, actor)
        done.append(f"{integration.name}: connected")
    hook = admin.renew_callback_url(medit, actor)
    db.session.commit()
    httpx.post(f"{base}/_sandbox/medit/webhook", json={"url": hook, "secret": vs.MEDIT_DEMO_WEBHOOK_SECRET},
               timeout=5).raise_for_status()
    for integration in (itero, medit):
        sync.sync_now(integration)
    db.session.commit()
    return done + ["Medit webhooks registered", "first syncs queued"]


def _integration(practice: Practice, vendor: Vendor, name: str, values: dict, actor: Actor) -> ScannerIntegration:
    integration = db.session.scalar(select(ScannerIntegration).where(
        ScannerIntegration.practice_id == practice.id, ScannerIntegration.vendor == vendor,
        ScannerIntegration.name == name))
    labs = [lab.id for lab in db.session.scalars(select(Lab).where(
        Lab.organization_id == practice.organization_id, Lab.active.is_(True)))]
    data = admin.IntegrationData(name=name, lab_ids=labs, values=values)
    if integration is None:
        return admin.create_integration(practice, vendor, data, actor)
    admin.update_integration(integration, data, actor)  # the sandbox's address may have changed
    if not integration.active:
        admin.set_active(integration, True, actor)
    return integration


def _sign_in(integration: ScannerIntegration, actor: Actor) -> None:
    """What the admin's browser does on Connect: the vendor's sign-in page answers at once with a
    code (the sandbox signs in without asking), which is traded for tokens; then pairing."""
    with current_app.test_request_context():  # url_for needs one; nothing else runs inside it
        redirect_uri = public_url(url_for("scanner_settings.oauth_callback"))
    state, url = admin.start_sign_in(integration, redirect_uri)
    answer = httpx.get(url, timeout=5)
    back = parse_qs(urlsplit(answer.headers.get("Location", "")).query)
    if answer.status_code not in (302, 303) or back.get("state") != [state] or not back.get("code"):
        raise RuntimeError(f"{integration.name}: the sandbox's sign-in did not answer with a code "
                           f"(HTTP {answer.status_code})")
    admin.finish_sign_in(integration, back["code"][0], redirect_uri, actor)
    db.session.commit()
    accounts = admin.pairing_accounts(integration)
    if accounts is None:
        admin.mark_connected(integration, actor)
    else:
        admin.pair(integration, accounts[0], actor)
    db.session.commit()
