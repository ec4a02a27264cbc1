"""Shared by the Open Dental tests: an Open Dental integration of a practice, with its keys sealed,
pointing at the sandbox (sandbox/opendental.py) on loopback."""
from __future__ import annotations

from sqlalchemy import func, select

from portal import keyring as crypto
from portal.audit.models import AuditEvent
from portal.extensions import db
from portal.integrations.models import ScannerIntegration
from portal.integrations.vendor import Vendor
from sandbox.opendental import DEMO_CUSTOMER_KEY, DEMO_DEVELOPER_KEY


def od_integration(practice, base_url: str, developer: str = DEMO_DEVELOPER_KEY, customer: str = DEMO_CUSTOMER_KEY,
                   **config) -> ScannerIntegration:
    i = ScannerIntegration(practice_id=practice.id, vendor=Vendor.OPENDENTAL, name="Front desk Open Dental")
    i.credentials = crypto.seal({"developer_key": developer, "customer_key": customer})
    i.set_config(base_url=base_url, **config)
    db.session.add(i)
    db.session.commit()
    return i


def audit_count(action: str | None = None) -> int:
    stmt = select(func.count()).select_from(AuditEvent)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    return db.session.scalar(stmt)


def reload(integration_id: int) -> ScannerIntegration:
    db.session.expire_all()
    return db.session.get(ScannerIntegration, integration_id)
