"""RQ entry points for work orders to a lab's API; the delivery itself is portal/dispatch/delivery.py."""
from __future__ import annotations

from jobs import app as _app


def deliver(dispatch_id: str) -> str:
    """One attempt of one dispatch: a retry (scheduled, or a person's), or the sweep's."""
    from portal.dispatch import delivery

    with _app().app_context():
        return delivery.deliver(dispatch_id)


def deliver_due(lab_id: int) -> dict:
    """A lab's drain job: the first attempt of every work order waiting for that lab."""
    from portal.dispatch import delivery

    with _app().app_context():
        return delivery.deliver_due(lab_id)


def on_failure(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ calls this when deliver() raised (a bug, the database away): put the row back on the
    retry path with the error, or fail it when its attempts are used up. The job stays failed in RQ."""
    from portal.dispatch import delivery

    dispatch_id = job.args[0] if job.args else None
    if dispatch_id:
        with _app().app_context():
            delivery.record_job_failure(dispatch_id, exc_type, exc_value)
