"""What every order of one sync looks up again, read once for the sync instead of once an order.

A poll ingests each order in its own transaction (portal/integrations/sync.py), and every commit
expires what the session holds, so each order used to load the integration, its allowed labs and
their services (for the due date), the practice and its providers all over again. A sync makes one
`Lookups` when it starts and drops it when it ends: what changes in the meantime (a lab's service
edited, a provider added) is seen from the next sync on, never later.

The objects are read in a session of their own and kept detached from the sync's session, so its
commits do not expire them and nothing the sync writes can reach them: they are read-only copies
(an attribute that was not loaded here raises DetachedInstanceError instead of quietly loading).
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from portal.extensions import db
from portal.integrations.models import ScannerIntegration
from portal.labs.models import Lab
from portal.people.models import Provider
from portal.practices.models import Practice


class Lookups:
    """The integration (with its allowed labs and their services), its practice and the practice's
    active providers as (id, name), read once when made."""

    def __init__(self, integration_id: int):
        with Session(db.engine, expire_on_commit=False) as session:
            self.integration = session.scalars(
                select(ScannerIntegration).where(ScannerIntegration.id == integration_id)
                .options(selectinload(ScannerIntegration.labs).selectinload(Lab.services))).one()
            self.practice = session.get(Practice, self.integration.practice_id)
            self.providers = [(p.id, p.name) for p in session.scalars(select(Provider).where(
                Provider.practice_id == self.integration.practice_id, Provider.active.is_(True)))]
        # Closing the session ended its read-only transaction and detached the objects as loaded
        # (a rollback would have expired them).
