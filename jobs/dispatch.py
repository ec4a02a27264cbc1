"""Deliver one attempt of a work order to a lab's API (contracts/lab-api.md, RELIABILITY.md D1-D4).

deliver(dispatch_id) claims the row (state guard plus a lease, committed before the request goes
out), posts the approved work order with its stable Idempotency-Key and Standard Webhooks
signature, then records the outcome: delivered, retry scheduled (capped exponential backoff with
full jitter, honouring Retry-After), or failed. An unexpected error is not swallowed: it reaches
RQ's failed registry, and `on_failure` puts the row back on the retry path.

`post_to_lab` (the signed request and how its answer is sorted), `schedule` and the HTTP client are
shared with jobs/notices.py, which delivers order events the same way.
"""
from __future__ import annotations

import datetime as dt
import email.utils
import logging
import os
import time
from dataclasses import dataclass

import httpx
import redis

from jobs import app as _app

log = logging.getLogger(__name__)
ACTOR_NAME = "jobs.dispatch.deliver"
TRANSIENT_STATUS = frozenset({408, 425, 429})
USER_AGENT = "LabManager-Dispatch/1"
_client: tuple[int, httpx.Client] | None = None


def http_client() -> httpx.Client:
    """One client per worker process (a fork gets its own): TLS set-up and connections are reused."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), httpx.Client(follow_redirects=False, headers={"User-Agent": USER_AGENT}))
    return _client[1]


def close_http_client() -> None:
    global _client
    if _client is not None:
        _client[1].close()
        _client = None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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
    """POST `body` signed the Standard Webhooks way and sort the answer (RELIABILITY.md D3): 2xx
    done; network errors, `transient` codes and 5xx retried; any other code final. `what` names
    the message in the error ("the work order")."""
    from portal.dispatch import services, signing

    all_headers = {"Content-Type": "application/json", **(headers or {}), **signing.headers(secrets, msg_id, body)}
    try:
        response = http_client().post(url, content=body, headers=all_headers,
                                      timeout=httpx.Timeout(services.http_timeout()))
    except httpx.TransportError as exc:  # connect/read/write timeouts, refused, reset
        return Answer("transient", None, f"Could not reach {lab_name}: {exc.__class__.__name__} {exc}".strip())
    code = response.status_code
    if 200 <= code < 300:
        return Answer("delivered", code, response=response)
    if code in transient or code >= 500:
        return Answer("transient", code, f"{lab_name} answered HTTP {code}: {_short(response)}".strip(),
                      retry_after=_retry_after(response) if code in (429, 503) else None, response=response)
    return Answer("permanent", code, f"{lab_name} refused {what} (HTTP {code}): {_short(response)}".strip(),
                  response=response)


def deliver(dispatch_id: str) -> str:
    from portal.audit.actor import Actor
    from portal.dispatch import services
    from portal.extensions import db

    with _app().app_context():
        # The claim's RETURNING is the row as committed; reloading it after the commit would only
        # cost a SELECT per attempt. (finish still expires it after writing an outcome.)
        db.session().expire_on_commit = False
        actor = Actor.job(ACTOR_NAME)
        dispatch = services.claim(dispatch_id)
        if dispatch is None:
            db.session.rollback()
            return "nothing to do"
        body, msg_id, next_job_id = dispatch.payload.encode(), dispatch.webhook_id, dispatch.job_id
        lab_name, api_url, secrets = services.lab_target(dispatch)
        # The claim is committed before the request goes out: a second job (or the sweep) sees
        # the lease and leaves the row alone; no transaction stays open during the HTTP call.
        db.session.commit()
        answer = post_to_lab(lab_name, api_url.rstrip("/") + "/orders", body, msg_id, secrets,
                             what="the work order", headers={"Idempotency-Key": dispatch_id})
        delay, outcome = None, "failed"
        if answer.outcome == "delivered":
            services.mark_delivered(dispatch, answer.status_code, _lab_reference(answer.response), actor)
            outcome = "delivered"
        elif answer.outcome == "transient":
            delay = services.mark_transient(dispatch, answer.error, answer.status_code, actor,
                                            retry_after=answer.retry_after)
        else:
            services.mark_permanent(dispatch, answer.error, answer.status_code, actor)
        db.session.commit()
        if delay is not None:
            schedule(services.DELIVER, dispatch_id, next_job_id, delay, services.job_options())
            outcome = "retry scheduled"
        return outcome


def schedule(func: str, row_id, job_id: str, delay: float, options: dict) -> None:
    """The next attempt, via RQ's scheduler (workers run --with-scheduler). If Redis is away the row
    is still pending with its next_attempt_at, and the outbox sweep enqueues it."""
    from portal.queue import get_queue

    try:
        get_queue().enqueue_in(dt.timedelta(seconds=delay), func, row_id, job_id=job_id, **options)
    except redis.RedisError as exc:
        log.warning("could not schedule %s (%s); the outbox sweep will", job_id, exc.__class__.__name__)


def on_failure(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ calls this when deliver() raised (a bug, the database away): put the row back on the
    retry path with the error, or fail it when its attempts are used up. The job stays failed in RQ."""
    from portal.audit.actor import Actor
    from portal.dispatch import services
    from portal.dispatch.models import Dispatch
    from portal.extensions import db

    dispatch_id = job.args[0] if job.args else None
    with _app().app_context():
        dispatch = db.session.get(Dispatch, dispatch_id) if dispatch_id else None
        if dispatch is None:
            return
        services.mark_transient(dispatch, f"The delivery job failed: {exc_type.__name__}: {exc_value}",
                                None, Actor.job(ACTOR_NAME))
        db.session.commit()
