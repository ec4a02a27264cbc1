"""RQ entry points for order events to a lab's API; the delivery itself is portal/dispatch/delivery.py."""
from __future__ import annotations

from jobs import app as _app


def deliver(notice_id: int) -> str:
    """One attempt of one order event, when it is its turn."""
    from portal.dispatch import delivery

    with _app().app_context():
        return delivery.deliver_notice(notice_id)


def on_failure(job, connection, exc_type, exc_value, traceback) -> None:
    """deliver() raised (a bug, the database away): put the notice back on the retry path, or fail
    it when its attempts are used up. The job stays failed in RQ."""
    from portal.dispatch import delivery

    with _app().app_context():
        delivery.record_notice_failure(job.args[0] if job.args else None, exc_type, exc_value)
