"""`make run`'s practice management system: an Open Dental integration of the demo practice,
connected to the Open Dental sandbox (sandbox/opendental.py) the way an admin would connect it,
with the sandbox's laboratory linked to one of the demo labs and a first sync queued.

Everything goes through the same services as the admin pages, audited as the system's "demo set-up".
"""
from __future__ import annotations

from sqlalchemy import select

from portal.audit.actor import Actor
from portal.extensions import db
from portal.integrations import services as admin
from portal.integrations import sync
from portal.integrations.models import ScannerIntegration
from portal.integrations.vendor import Vendor
from portal.demo.scanners import demo_practice

NAME = "Front desk Open Dental"


def connect(base_url: str) -> list[str]:
    """Create (once) and connect the demo practice's Open Dental integration; a line per step."""
    from sandbox.opendental import DEMO_CUSTOMER_KEY, DEMO_DEVELOPER_KEY  # make run only: beside the package

    practice = demo_practice()
    if practice is None:
        return ["no demo practice: run flask seed-demo first"]
    actor = Actor.system("demo set-up")
    values = {"developer_key": DEMO_DEVELOPER_KEY, "customer_key": DEMO_CUSTOMER_KEY,
              "base_url": base_url.rstrip("/"), "clinic_num": ""}
    integration = db.session.scalar(select(ScannerIntegration).where(
        ScannerIntegration.practice_id == practice.id, ScannerIntegration.vendor == Vendor.OPENDENTAL))
    data = admin.IntegrationData(name=NAME, lab_ids=[], values=values)
    if integration is None:
        integration = admin.create_integration(practice, Vendor.OPENDENTAL, data, actor)
    else:
        admin.update_integration(integration, data, actor)  # the sandbox's address may have changed
        integration.set_config(cursors={})  # a new sandbox: read it all again
        if not integration.active:
            admin.set_active(integration, True, actor)
    db.session.commit()
    answer = admin.test_connection(integration)
    admin.mark_connected(integration, actor)
    db.session.commit()
    from portal.integrations.pms import run_pms_sync

    run_pms_sync(integration.id, "demo set-up")  # the laboratories must be there to link one
    from portal.integrations.models import PmsLaboratory
    from portal.labs.models import Lab

    lab = db.session.scalar(select(Lab).where(Lab.organization_id == practice.organization_id,
                                              Lab.active.is_(True)).order_by(Lab.id))
    done = [f"{NAME}: {answer}"]
    laboratory = db.session.scalar(select(PmsLaboratory).where(PmsLaboratory.integration_id == integration.id,
                                                               PmsLaboratory.lab_id.is_(None)))
    if lab is not None and laboratory is not None:
        from portal.integrations.pms import link_laboratory

        if db.session.scalar(select(PmsLaboratory.id).where(PmsLaboratory.integration_id == integration.id,
                                                            PmsLaboratory.lab_id == lab.id)) is None:
            link_laboratory(integration, laboratory.id, lab.id, practice.organization_id, actor)
            done.append(f"{laboratory.name} linked to {lab.name}")
    sync.sync_now(integration)
    db.session.commit()
    return done + ["first sync done; the next is queued"]
