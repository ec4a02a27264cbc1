"""Scanner jobs: poll a vendor, and act on its stored notifications (portal/integrations/sync.py);
read a large uploaded scan file (portal/scans/uploads.py).

Both take ids and build their own app context. A poll that the vendor refuses is recorded on the
integration (its "last error", shown to admins) and tried again by the next sweep; an unexpected
error is not swallowed: it reaches RQ's failed registry.
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


# -- a large uploaded file, read in the background ---------------------------------------------------

INSPECT_ACTOR = "jobs.scanners.inspect_file"


class ProgressWriter:
    """mesh.inspect's progress callback: the percentage read, written in its own short transaction
    each time it moved on by at least `step` percent (nothing else is open while the file is read)."""

    def __init__(self, file_id: int, step: int):
        self.file_id, self.step, self.last = file_id, step, 0

    def __call__(self, done: int, total: int) -> None:
        from portal.extensions import db
        from portal.scans import uploads

        percent = int(100 * done / total) if total else 0
        if percent - self.last < self.step or percent >= 100:
            return
        self.last = percent
        uploads.set_progress(self.file_id, percent)
        db.session.commit()


def inspect_file(scan_file_id: int) -> str:
    """Read one PROCESSING file of the document store and set it OK with its counts, or REFUSED with
    the reader's message. State-guarded: a rerun (the sweep, a second enqueue) finds the file no
    longer PROCESSING and does nothing; the outcome is written once (an UPDATE ... WHERE state =
    'processing'). Deterministic job id: uploads.inspect_job_id."""
    from portal.audit.actor import Actor
    from portal.extensions import db
    from portal.scans import uploads

    with _app().app_context():
        target = uploads.claim(scan_file_id)
        db.session.rollback()  # no transaction stays open while the file is read
        if target is None:
            return "nothing to do"
        info, error = uploads.read(target, ProgressWriter(scan_file_id, uploads.PROGRESS_STEP))
        outcome = uploads.finish(scan_file_id, info, error, Actor.job(INSPECT_ACTOR))
        db.session.commit()
        return outcome


def inspect_failed(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ calls this when inspect_file raised (a bug, the time limit, a worker that died): refuse the
    file with why, so it does not look busy for ever. If the database is away too, the file stays
    PROCESSING and the sweep gives it its job again."""
    from rq.timeouts import JobTimeoutException

    from portal.audit.actor import Actor
    from portal.extensions import db
    from portal.scans import uploads

    file_id = job.args[0] if job.args else None
    if file_id is None:
        return
    if issubclass(exc_type, JobTimeoutException):
        message = (f"Reading this file took longer than {job.timeout} seconds and was stopped. Check that it is "
                   "a scan, and upload it again.")
    else:
        message = f"Lab Manager could not finish checking this file ({exc_type.__name__}); upload it again."
    with _app().app_context():
        uploads.fail(file_id, message, Actor.job(INSPECT_ACTOR))
        db.session.commit()
