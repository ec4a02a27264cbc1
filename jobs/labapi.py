"""Apply a lab's stored status events to their cases (portal/labapi/services.py).

The endpoint verified and stored each event as pending and, after its commit, enqueued
`apply_pending` for the lab unless one was already waiting. The job first lets the next request
enqueue again (so nothing committed after its read is left waiting), then applies the lab's
pending events in the order they arrived, each in its own transaction: it re-reads the case,
applies the event through the lifecycle with its audit rows, and marks it applied, noop or
ignored. A second run finds nothing pending and does nothing. An event whose apply raises is
rolled back and stays pending; the others go on, and the job then fails in RQ so the error is
seen, and the outbox sweep hands the event over again.
"""
from __future__ import annotations

from jobs import app as _app
from jobs import each_in_its_own_transaction


def apply_pending(lab_id: int) -> list[str]:
    """Every pending event of one lab; returns their outcomes in order."""
    from portal.labapi import services
    from portal.queue import release

    with _app().app_context():
        release(services.drain_key(lab_id))
        return each_in_its_own_transaction(services.pending_ids(lab_id), services.apply_stored,
                                           f"lab events of lab {lab_id}")


def apply_event(lab_event_id: int) -> str:
    """One stored event (for an operator re-running one by hand); nothing if no longer pending."""
    from portal.extensions import db
    from portal.labapi import services

    with _app().app_context():
        outcome = services.apply_stored(lab_event_id)
        db.session.commit()
        return outcome
