"""Deliver one attempt of an order event to a lab's API (contracts/lab-api.md "order events").

deliver(notice_id) claims the notice when it is its turn (its work order delivered, no earlier
notice of the order still on its way; portal/dispatch/notices.py), posts the event to
`{api_url}/orders/{order_id}/events` signed like a work order, with the same `webhook-id` on every
attempt, and records the outcome: delivered, retry scheduled, or failed for good. The request and
the sorting of the answer are the work order's (jobs.dispatch.post_to_lab), except that a 409 is
retried: for an event it means the lab is not ready for it yet, not a clash of bodies.
"""
from __future__ import annotations

from jobs import app as _app
from jobs.dispatch import TRANSIENT_STATUS, post_to_lab, schedule

ACTOR_NAME = "jobs.notices.deliver"
TRANSIENT_FOR_EVENTS = TRANSIENT_STATUS | {409}


def deliver(notice_id: int) -> str:
    from portal.audit.actor import Actor
    from portal.dispatch import notices, services
    from portal.extensions import db

    with _app().app_context():
        db.session().expire_on_commit = False  # as in jobs.dispatch.deliver: the claim returns the row
        actor = Actor.job(ACTOR_NAME)
        notice = notices.claim(notice_id)
        if notice is None:
            db.session.rollback()
            return "nothing to do"  # delivered, failed, withdrawn, or not its turn yet
        body, msg_id, next_job_id = notice.payload.encode(), notice.webhook_id, notice.job_id
        url_path = f"/orders/{notice.dispatch_id}/events"
        lab_name, api_url, secrets = services.lab_target(notice)
        db.session.commit()  # the lease holds while the request is out; no transaction stays open
        answer = post_to_lab(lab_name, api_url.rstrip("/") + url_path, body, msg_id, secrets,
                             what=f"the {notice.type.label.lower()}", transient=TRANSIENT_FOR_EVENTS)
        delay, outcome = None, "failed"
        if answer.outcome == "delivered":
            notices.mark_delivered(notice, answer.status_code, actor)
            outcome = "delivered"
        elif answer.outcome == "transient":
            delay = notices.mark_transient(notice, answer.error, answer.status_code, actor,
                                           retry_after=answer.retry_after)
        else:
            notices.mark_permanent(notice, answer.error, answer.status_code, actor)
        db.session.commit()
        if delay is not None:
            schedule(notices.DELIVER, notice_id, next_job_id, delay, services.job_options(notices.ON_FAILURE))
            outcome = "retry scheduled"
        return outcome


def on_failure(job, connection, exc_type, exc_value, traceback) -> None:
    """deliver() raised (a bug, the database away): put the notice back on the retry path, or fail
    it when its attempts are used up. The job stays failed in RQ."""
    from portal.audit.actor import Actor
    from portal.dispatch import notices
    from portal.dispatch.models import OrderNotice
    from portal.extensions import db

    notice_id = job.args[0] if job.args else None
    with _app().app_context():
        notice = db.session.get(OrderNotice, notice_id) if notice_id is not None else None
        if notice is None:
            return
        notices.mark_transient(notice, f"The delivery job failed: {exc_type.__name__}: {exc_value}",
                               None, Actor.job(ACTOR_NAME))
        db.session.commit()
