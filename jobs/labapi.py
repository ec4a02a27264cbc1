"""Apply a lab's stored status event to its case (portal/labapi/services.py).

The endpoint verified and stored the event as pending and enqueued this after its commit, with
the job id `lab-event-<id>`. The job re-reads the case, applies the event through the lifecycle
with its audit rows, and marks it applied, noop or ignored, in one transaction. A second run finds
the event no longer pending and does nothing. An error is not swallowed: the job fails in RQ, the
event stays pending, and the outbox sweep enqueues it again.
"""
from __future__ import annotations

from jobs import app as _app


def apply_event(lab_event_id: int) -> str:
    from portal.extensions import db
    from portal.labapi import services

    with _app().app_context():
        outcome = services.apply_stored(lab_event_id)
        db.session.commit()
        return outcome
