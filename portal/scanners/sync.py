"""Bringing scans in: polling a vendor, and acting on its notifications (jobs/scanners.py runs these).

A sync asks the adapter for the orders changed since the integration's cursor and ingests each
in its own transaction, so one bad order never holds back the others and no write is open while
the vendor is being called (portal/scanners/oauth.py needs that). The cursor moves only after a
whole poll succeeded; a failed poll records the vendor's reason on the integration (and an audit
row when it starts or stops failing) and the next sweep tries again.

A notification (iTero's scan callback, a Medit webhook) is verified and stored as a VendorEvent in
the request (W5); a job re-reads each order through the vendor's API (W6) and ingests it. A
repeat delivery has the same key and is not stored twice (W4); a callback that repeats the same
order id after a rescan is a new event, and ingest compares the order's content anyway.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal.audit.actor import Actor
from portal.audit.service import record
from portal.extensions import db
from portal.practices.models import utcnow
from portal.scanners import services
from portal.scanners.adapters import Notice, adapter_for
from portal.scanners.http import VendorError
from portal.scanners.models import ScannerIntegration, VendorEvent
from portal.scanners.vendor import VendorOrder

log = logging.getLogger(__name__)
SYNC = "jobs.scanners.sync"
HANDLE_EVENTS = "jobs.scanners.handle_events"


def sync_key(integration_id: int) -> str:
    return f"scanner-sync-{integration_id}"


def events_key(integration_id: int) -> str:
    return f"scanner-events-{integration_id}"


def job_options() -> dict:
    # A poll pages through the vendor: give it room, but less than the sweep interval times a few.
    return {"job_timeout": 600, "result_ttl": 3600, "failure_ttl": 7 * 86400}


def can_sync(integration: ScannerIntegration) -> bool:
    adapter = adapter_for(integration)
    return integration.active and adapter.polls and (integration.connected or not adapter.uses_oauth)


def run_sync(integration_id: int, source: str = "jobs.scanners.sync") -> dict:
    """Poll one integration and ingest what changed; the caller owns the app context."""
    integration = db.session.get(ScannerIntegration, integration_id)
    if integration is None or not can_sync(integration):
        db.session.rollback()
        return {"skipped": True}
    adapter = adapter_for(integration)
    actor = Actor.vendor(integration, source)
    db.session.commit()  # nothing of ours is open while the vendor is called
    outcomes: Counter[str] = Counter()
    try:
        for order in adapter.poll():
            outcomes[ingest_one(integration_id, order, "poll", actor)] += 1
    except VendorError as exc:
        db.session.rollback()
        failed(db.session.get(ScannerIntegration, integration_id), exc, actor)
        db.session.commit()
        return {"error": str(exc), **outcomes}
    integration = db.session.get(ScannerIntegration, integration_id)
    if adapter.next_cursor is not None:
        integration.sync_cursor = adapter.next_cursor
    succeeded(integration, actor)
    db.session.commit()
    return dict(outcomes)


def ingest_one(integration_id: int, order: VendorOrder, source: str, actor: Actor) -> str:
    """Ingest one order in its own transaction. A concurrent first ingest of the same new order
    (two jobs at once) loses on the unique key; it is then ingested again as an update."""
    for attempt in (1, 2):
        integration = db.session.get(ScannerIntegration, integration_id)
        try:
            result = services.ingest(integration.practice_id, order, actor=actor, source=source,
                                     integration=integration)
            db.session.commit()
            return result.outcome
        except IntegrityError:
            db.session.rollback()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def succeeded(integration: ScannerIntegration, actor: Actor) -> None:
    now = utcnow()
    integration.last_sync_at = integration.last_success_at = now
    if integration.last_error:
        record("scanner.sync_recovered", "scanner_integration", integration.id,
               before={"last_error": integration.last_error}, after={"last_error": ""}, actor=actor,
               practice_id=integration.practice_id)
        integration.last_error, integration.last_error_at = "", None


def failed(integration: ScannerIntegration, exc: VendorError, actor: Actor) -> None:
    now = utcnow()
    message = str(exc)[:500]
    if exc.kind == "auth":
        message = f"{message} Connect the integration again (Settings → Scanners)."[:500]
    integration.last_sync_at = now
    if integration.last_error != message:
        record("scanner.sync_failed", "scanner_integration", integration.id,
               before={"last_error": integration.last_error}, after={"last_error": message, "kind": exc.kind},
               actor=actor, practice_id=integration.practice_id, outcome="error")
    integration.last_error, integration.last_error_at = message, now


# -- notifications ------------------------------------------------------------------------------------

def store_notices(integration: ScannerIntegration, notices: list[Notice]) -> int:
    """Store what a verified notification asks for; a key already stored is a repeat (W4). After the
    commit, the integration's event job is enqueued unless one is already waiting. Returns how
    many were new."""
    from portal.queue import enqueue_once_after_commit

    new = 0
    for notice in notices:
        seen = db.session.scalar(select(VendorEvent.id).where(
            VendorEvent.integration_id == integration.id, VendorEvent.event_key == notice.key[:100]))
        if seen is not None:
            continue
        db.session.add(VendorEvent(integration_id=integration.id, event_key=notice.key[:100],
                                   kind=notice.kind[:40], order_ref=notice.order_ref[:100]))
        new += 1
    if new:
        db.session.flush()
        enqueue_once_after_commit(events_key(integration.id), HANDLE_EVENTS, integration.id, **job_options())
    return new


def pending_events(integration_id: int) -> list[int]:
    return list(db.session.scalars(select(VendorEvent.id).where(
        VendorEvent.integration_id == integration_id, VendorEvent.outcome == "pending").order_by(VendorEvent.id)))


def handle_event(event_id: int, source: str = "jobs.scanners.handle_events") -> str:
    """Re-read the order a stored notification names and ingest it; the event's outcome says what
    came of it. A transient vendor error leaves it pending for the sweep; the caller commits."""
    event = db.session.get(VendorEvent, event_id)
    if event is None or event.outcome != "pending":
        return "nothing to do"
    integration = db.session.get(ScannerIntegration, event.integration_id)
    actor = Actor.vendor(integration, source)
    if not integration.active:
        event.outcome, event.handled_at, event.error = "ignored", utcnow(), "the integration is paused"
        return event.outcome
    adapter = adapter_for(integration)
    order_ref = event.order_ref
    db.session.commit()  # nothing of ours is open while the vendor is called
    try:
        order = adapter.fetch(order_ref)
    except VendorError as exc:
        db.session.rollback()
        event = db.session.get(VendorEvent, event_id)
        event.error = str(exc)[:300]
        if exc.transient:
            return "retry"
        event.outcome, event.handled_at = "failed", utcnow()
        failed(db.session.get(ScannerIntegration, event.integration_id), exc, actor)
        return event.outcome
    if order is not None:
        outcome = ingest_one(event.integration_id, order, "callback", actor)
    elif adapter.deletes_when_missing:
        outcome = gone(event.integration_id, order_ref, actor)
    else:
        outcome = "ignored"
    event = db.session.get(VendorEvent, event_id)
    event.outcome, event.handled_at, event.error = ("ignored" if outcome == "ignored" else "done"), utcnow(), ""
    return outcome


def gone(integration_id: int, order_id: str, actor: Actor) -> str:
    """The vendor no longer has the order: its scan shows it was deleted there ("ignored" when we
    never had it, or knew already). The lab case is left as it is: a person decides."""
    integration = db.session.get(ScannerIntegration, integration_id)
    scan = services.mark_deleted(integration.practice_id, integration.vendor, order_id, actor=actor)
    return "ignored" if scan is None else "deleted"


# -- the sweep -----------------------------------------------------------------------------------------

def sweep(grace_seconds: int = 30) -> dict:
    """Enqueue a poll of every integration due one, and the event job of every integration whose
    notifications wait longer than `grace_seconds`. Fixed job ids and claims: sweeps don't pile up."""
    from portal.queue import enqueue_now, enqueue_once, get_queue

    queue = get_queue()
    now = utcnow()
    due = now - dt.timedelta(seconds=current_app.config["SCANNER_POLL_SECONDS"])
    polled = 0
    for integration in db.session.scalars(select(ScannerIntegration).where(ScannerIntegration.active.is_(True))):
        try:
            ready = can_sync(integration)
        except VendorError:
            continue
        if ready and (integration.last_sync_at is None or integration.last_sync_at <= due):
            polled += enqueue_once(queue, sync_key(integration.id), SYNC, integration.id,
                                   window=300, **job_options())
    cutoff = now - dt.timedelta(seconds=grace_seconds)
    waiting = db.session.scalars(select(VendorEvent.integration_id).where(
        VendorEvent.outcome == "pending", VendorEvent.received_at <= cutoff).distinct()).all()
    for integration_id in waiting:
        enqueue_now(queue, HANDLE_EVENTS, integration_id, job_id=f"{events_key(integration_id)}-sweep",
                    **job_options())
    return {"polled": polled, "events": len(waiting)}


def sync_now(integration: ScannerIntegration) -> None:
    """A person asked for a poll now: after the commit, unless one is already waiting."""
    from portal.queue import enqueue_once_after_commit

    enqueue_once_after_commit(sync_key(integration.id), SYNC, integration.id, window=300, **job_options())
