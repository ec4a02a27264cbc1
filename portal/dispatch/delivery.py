"""Deliver work orders and order events to a lab's API (openapi/lab-api.yaml). The RQ entry points
are jobs/dispatch.py and jobs/notices.py; they push an app context and call these.

An attempt claims the row (state guard plus a lease, committed before the request goes out),
posts the approved work order with its stable Idempotency-Key and Standard Webhooks signature,
then records the outcome with its audit row: delivered, retry scheduled (on the retry schedule
of portal/retries.py, honouring Retry-After), or failed. An unexpected error is not swallowed:
it reaches RQ's failed registry, and the attempt under way goes back on the retry path.

Two jobs make a work order's attempts. `deliver_due(lab_id)`, the lab's drain job, is what
approve_and_send relays: it makes the first attempt of every work order waiting for that lab, one
after another, so a burst of sends costs one RQ job (RQ's own bookkeeping was a third of a job per
order). `deliver(dispatch_id)` makes one attempt of one dispatch: its scheduled retries, a
person's Retry, and the outbox sweep's re-enqueues, each with a deterministic job id.

`deliver_notice(notice_id)` makes one attempt of an order event: it claims the notice when it is
its turn (its work order delivered, no earlier notice of the order still on its way;
portal/dispatch/notices.py), posts the event to `{api_url}/orders/{order_id}/events` signed like a
work order, with the same `webhook-id` on every attempt, and records the outcome. The request and
the sorting of the answer are the work order's (`post_to_lab`), except that a 409 is retried: for
an event it means the lab is not ready for it yet, not a clash of bodies.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import httpx

from portal import outbound
from portal.audit.actor import Actor
from portal.dispatch import notices, services, signing
from portal.dispatch.models import Dispatch, OrderNotice
from portal.extensions import db
from portal.queue import DELIVER_DUE, DELIVER_NOTICE, DELIVER_WORK_ORDER, enqueue_once, get_queue, release, schedule

log = logging.getLogger(__name__)
ACTOR_NAME = DELIVER_WORK_ORDER.func  # the audit rows name the job that wrote them
NOTICE_ACTOR_NAME = DELIVER_NOTICE.func
TRANSIENT_STATUS = frozenset({408, 425, 429})
TRANSIENT_FOR_EVENTS = TRANSIENT_STATUS | {409}


def _lab_reference(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return ""
    ref = data.get("lab_reference") if isinstance(data, dict) else None
    return ref if isinstance(ref, str) else ""


def _short(response: httpx.Response) -> str:
    """The lab's reason, for people: the `error` of a JSON error body, else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"].strip()[:200]
    text = response.text.strip().replace("\n", " ")
    return text[:200]


@dataclass(frozen=True)
class Answer:
    """What one signed POST to a lab's API came to: "delivered", "transient" (try again, after at
    least `retry_after` seconds when the lab said so) or "permanent", with an error for people."""

    outcome: str
    status_code: int | None
    error: str = ""
    retry_after: float | None = None
    response: httpx.Response | None = None


def post_to_lab(lab_name: str, url: str, body: bytes, msg_id: str, secrets: list[str], *, what: str,
                headers: dict[str, str] | None = None, transient: frozenset[int] = TRANSIENT_STATUS) -> Answer:
    """POST `body` signed the Standard Webhooks way and sort the answer: 2xx done; network errors,
    `transient` codes and 5xx retried; any other code final, and so is an address Lab Manager
    does not send to (portal/outbound.py). `what` names the message in the error ("the work order")."""
    all_headers = {"Content-Type": "application/json", **(headers or {}), **signing.headers(secrets, msg_id, body)}
    try:
        response = outbound.request("POST", url, who=lab_name, content=body, headers=all_headers,
                                    timeout=services.http_timeout())
    except outbound.OutboundError as exc:
        return Answer("transient" if exc.transient else "permanent", None, str(exc))
    code = response.status_code
    if 200 <= code < 300:
        return Answer("delivered", code, response=response)
    if code in transient or code >= 500:
        return Answer("transient", code, f"{lab_name} answered HTTP {code}: {_short(response)}".strip(),
                      retry_after=outbound.retry_after(response) if code in (429, 503) else None, response=response)
    return Answer("permanent", code, f"{lab_name} refused {what} (HTTP {code}): {_short(response)}".strip(),
                  response=response)


# -- work orders -----------------------------------------------------------------------------------------

def deliver(dispatch_id: str) -> str:
    """One attempt of one dispatch: a retry (scheduled, or a person's), or the sweep's."""
    # The claim's RETURNING is the row as committed; reloading it after the commit would only
    # cost a SELECT per attempt. (finish still expires it after writing an outcome.)
    db.session().expire_on_commit = False
    dispatch = services.claim(dispatch_id)
    if dispatch is None:
        db.session.rollback()
        return "nothing to do"
    target = services.lab_target(dispatch)
    # The claim is committed before the request goes out: a second job (or the sweep) sees
    # the lease and leaves the row alone; no transaction stays open during the HTTP call.
    db.session.commit()
    outcome, retry = _attempt(dispatch, target, Actor.job(ACTOR_NAME))
    db.session.commit()
    return _schedule_retry(outcome, retry)


def deliver_due(lab_id: int) -> dict:
    """The first attempt of every work order waiting for one lab: a lab's drain job.

    approve_and_send enqueues it after its commit unless one is already waiting for the lab
    (portal/queue.py, SET NX), so a burst of sends shares one job. It lets the next send enqueue
    again before it reads (nothing committed after the read is left waiting), then goes through
    the lab's waiting dispatches oldest first, each exactly as `deliver` would: its own claim and
    lease, committed before its request goes out; its signed POST with its Idempotency-Key; its
    outcome and audit row, committed in the same transaction as the claim of the next one; a
    transient answer schedules that dispatch's own retry job.

    Bounded: it starts no attempt after DISPATCH_BATCH_SECONDS, nor more than DISPATCH_BATCH_SIZE,
    and then enqueues a new drain job for the rest, which queues behind other labs' work. Killed
    midway, it leaves the dispatch under way leased and the rest pending: the sweep hands both
    over again, and the lab's Idempotency-Key makes a repeated request harmless. An exception is
    recorded on the dispatch under way (as `record_job_failure` does for `deliver`) and re-raised.
    """
    release(services.drain_key(lab_id))
    db.session().expire_on_commit = False  # as in deliver: each claim returns its row
    started, budget, size = time.monotonic(), services.batch_seconds(), services.batch_size()
    waiting = services.first_attempts_due(lab_id, size)
    more = len(waiting) == size  # there may be more than one job's worth
    target = services.lab_target_of(lab_id) if waiting else None
    actor, outcomes, under_way = Actor.job(ACTOR_NAME), Counter(), None
    try:
        dispatch = _claim_next(waiting)
        db.session.commit()
        while dispatch is not None:
            under_way = dispatch.id
            outcome, retry = _attempt(dispatch, target, actor)
            dispatch = _claim_next(waiting) if time.monotonic() - started < budget else None
            db.session.commit()  # this outcome with its audit row, and the next claim
            under_way = None
            outcomes[_schedule_retry(outcome, retry)] += 1
    except Exception as exc:
        db.session.rollback()
        if under_way is not None:
            record_job_failure(under_way, type(exc), exc)
        raise
    if waiting or more:  # the rest in a new job, behind whatever else is queued
        enqueue_once(get_queue(), services.drain_key(lab_id), DELIVER_DUE, lab_id)
    return dict(outcomes)


def _claim_next(waiting: list[str]) -> Dispatch | None:
    """Claim the first of `waiting` still waiting for its first attempt (another job may have
    taken some meanwhile); removes the ids it tried. None when none is left."""
    while waiting:
        dispatch = services.claim_first(waiting.pop(0))
        if dispatch is not None:
            return dispatch
    return None


def _attempt(dispatch: Dispatch, target: tuple[str, str, list[str]], actor: Actor) -> tuple[str, tuple | None]:
    """Post the claimed dispatch's work order and write its outcome and audit row (the caller
    commits). Returns the outcome and, for a transient answer with attempts left, the retry to
    schedule after the commit: (dispatch id, its next job id, delay)."""
    lab_name, api_url, secrets = target
    dispatch_id, next_job_id = dispatch.id, dispatch.job_id
    answer = post_to_lab(lab_name, api_url.rstrip("/") + "/orders", dispatch.payload.encode(),
                         dispatch.webhook_id, secrets, what="the work order",
                         headers={"Idempotency-Key": dispatch_id})
    if answer.outcome == "delivered":
        services.mark_delivered(dispatch, answer.status_code, _lab_reference(answer.response), actor)
        return "delivered", None
    if answer.outcome == "transient":
        delay = services.mark_transient(dispatch, answer.error, answer.status_code, actor,
                                        retry_after=answer.retry_after)
        return "failed", (dispatch_id, next_job_id, delay) if delay is not None else None
    services.mark_permanent(dispatch, answer.error, answer.status_code, actor)
    return "failed", None


def _schedule_retry(outcome: str, retry: tuple | None) -> str:
    """After the commit: hand RQ the dispatch's own next attempt, if one is due."""
    if retry is None:
        return outcome
    dispatch_id, job_id, delay = retry
    schedule(DELIVER_WORK_ORDER, dispatch_id, job_id=job_id, delay=delay)
    return "retry scheduled"


def record_job_failure(dispatch_id: str, exc_type, exc_value) -> None:
    """The attempt under way when a job raised (a bug, the database away): back on the retry
    path with the error (the sweep enqueues it when due), or failed if its attempts are used up.
    Nothing if it is no longer sending (its outcome was recorded, or it was superseded)."""
    dispatch = db.session.get(Dispatch, dispatch_id)
    if dispatch is None:
        return
    services.mark_transient(dispatch, f"The delivery job failed: {exc_type.__name__}: {exc_value}",
                            None, Actor.job(ACTOR_NAME))
    db.session.commit()


# -- order events -----------------------------------------------------------------------------------------

def deliver_notice(notice_id: int) -> str:
    db.session().expire_on_commit = False  # as in deliver: the claim returns the row
    actor = Actor.job(NOTICE_ACTOR_NAME)
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
        schedule(DELIVER_NOTICE, notice_id, job_id=next_job_id, delay=delay)
        outcome = "retry scheduled"
    return outcome


def record_notice_failure(notice_id: int, exc_type, exc_value) -> None:
    """deliver_notice raised (a bug, the database away): put the notice back on the retry path,
    or fail it when its attempts are used up."""
    notice = db.session.get(OrderNotice, notice_id) if notice_id is not None else None
    if notice is None:
        return
    notices.mark_transient(notice, f"The delivery job failed: {exc_type.__name__}: {exc_value}",
                           None, Actor.job(NOTICE_ACTOR_NAME))
    db.session.commit()
