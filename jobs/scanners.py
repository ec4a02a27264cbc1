"""RQ entry points for scanner vendors: poll one, act on its stored notifications
(portal/integrations/sync.py); read a large uploaded scan file (portal/scans/uploads.py).

A poll that the vendor refuses is recorded on the integration (its "last error", shown to admins)
and tried again by the next sweep; an unexpected error is not swallowed: it reaches RQ's failed
registry.
"""
from __future__ import annotations

from jobs import app as _app
from jobs import each_in_its_own_transaction


def sync(integration_id: int) -> dict:
    from portal.integrations import sync as scanner_sync
    from portal.queue import release

    with _app().app_context():
        release(scanner_sync.sync_key(integration_id))
        return scanner_sync.run_sync(integration_id)


def handle_events(integration_id: int) -> list[str]:
    """Every pending notification of one integration, in arrival order, each in its own transaction."""
    from portal.integrations import sync as scanner_sync
    from portal.queue import release

    with _app().app_context():
        release(scanner_sync.events_key(integration_id))
        return each_in_its_own_transaction(scanner_sync.pending_events(integration_id),
                                           scanner_sync.handle_event, f"vendor events of integration {integration_id}")


def inspect_file(scan_file_id: int) -> str:
    """Read one large uploaded file in the background."""
    from portal.scans import uploads

    with _app().app_context():
        return uploads.inspect_in_background(scan_file_id)


def inspect_failed(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ calls this when inspect_file raised: the file is refused with why."""
    from portal.scans import uploads

    file_id = job.args[0] if job.args else None
    if file_id is not None:
        with _app().app_context():
            uploads.background_failed(file_id, exc_type, job.timeout)
