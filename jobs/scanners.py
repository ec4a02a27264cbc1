"""Scanner jobs: poll a vendor, and act on its stored notifications (portal/scanners/sync.py).

Both take ids and build their own app context. A poll that the vendor refuses is recorded on the
integration (its "last error", shown to admins) and tried again by the next sweep; an unexpected
error is not swallowed: it reaches RQ's failed registry.
"""
from __future__ import annotations

import logging

from jobs import app as _app

log = logging.getLogger(__name__)


def sync(integration_id: int) -> dict:
    from portal.queue import release
    from portal.scanners import sync as scanner_sync

    with _app().app_context():
        release(scanner_sync.sync_key(integration_id))
        return scanner_sync.run_sync(integration_id)


def handle_events(integration_id: int) -> list[str]:
    """Every pending notification of one integration, in arrival order, each in its own transaction."""
    from portal.extensions import db
    from portal.queue import release
    from portal.scanners import sync as scanner_sync

    with _app().app_context():
        release(scanner_sync.events_key(integration_id))
        outcomes, failed = [], []
        for event_id in scanner_sync.pending_events(integration_id):
            try:
                outcomes.append(scanner_sync.handle_event(event_id))
                db.session.commit()
            except Exception:
                db.session.rollback()
                log.exception("vendor event %s could not be handled; it stays pending", event_id)
                failed.append(event_id)
        if failed:
            raise RuntimeError(f"vendor events {failed} of integration {integration_id} stay pending")
        return outcomes
