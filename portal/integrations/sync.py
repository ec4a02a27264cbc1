"""Bringing scans in: polling a vendor, and acting on its notifications (jobs/scanners.py runs these).

A sync asks the adapter for the orders changed since the integration's cursor and ingests each
in its own transaction, so one bad order never holds back the others and no write is open while
the vendor is being called (portal/integrations/oauth.py needs that). What every order looks up
again (the integration's labs and their services, the practice, its providers) is read once per
sync (portal/scans/lookups.py), and the scans of a page of orders are looked up together. The
cursor moves only after a whole poll succeeded; a failed poll records the vendor's reason on the integration (and an audit
row when it starts or stops failing) and the next sweep tries again.

An order the adapter could not read (a malformed ORDER) is skipped and recorded (an audit row, the
integration's last error) and the others are ingested; the cursor moves on, so it is read again
when the vendor changes it. A vendor that asks us to wait (429 with Retry-After) is not polled
again before that time, by the sweep or by "Sync now"; the job does not sleep. A vendor that
points us at a host off the allow-list (docs/reliability.md W8) stops the integration: it is paused with the reason.

A notification (iTero's scan callback, a Medit webhook) is verified and stored as a VendorEvent in
the request (docs/reliability.md W5); a job re-reads each order through the vendor's API (W6) and ingests it. A
repeat delivery has the same key and is not stored twice (docs/reliability.md W4); for a vendor without event ids
(iTero), a repeat while a re-read of that order still waits is not stored either, and a callback
that repeats the same order id after the re-read started (a rescan) is a new event. An event is
"reading" while its job calls the vendor; a job that dies there leaves it for the sweep.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterable, Iterator

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from portal.audit.actor import Actor
from portal.audit.record import held_head
from portal.extensions import db
from portal.integrations.base import Notice
from portal.integrations.http import VendorError
from portal.integrations.models import ScannerIntegration, VendorEvent
from portal.integrations.pms import run_pms_sync
from portal.integrations.outcomes import failed, retry_wait, succeeded, unreadable  # noqa: F401 (sync.retry_wait)
from portal.integrations.registry import adapter_for
from portal.integrations.vendor import VendorOrder
from portal.practices.models import utcnow
from portal.queue import SCANNER_EVENTS, SCANNER_SYNC, enqueue_now, enqueue_once, enqueue_once_after_commit, get_queue
from portal.scans import services
from portal.scans.lookups import Lookups
from portal.scans.models import Scan

log = logging.getLogger(__name__)


def sync_key(integration_id: int) -> str:
    return f"scanner-sync-{integration_id}"


def events_key(integration_id: int) -> str:
    return f"scanner-events-{integration_id}"


def can_sync(integration: ScannerIntegration) -> bool:
    adapter = adapter_for(integration)
    return integration.active and adapter.polls and (integration.connected or not adapter.uses_oauth)


def run_sync(integration_id: int, source: str = SCANNER_SYNC.func) -> dict:
    """Poll one integration and ingest what changed; the caller owns the app context."""
    integration = db.session.get(ScannerIntegration, integration_id)
    if integration is None or not can_sync(integration):
        db.session.rollback()
        return {"skipped": True}
    wait = retry_wait(integration)
    if wait is not None:
        db.session.rollback()
        return {"skipped": True, "retry_after": round(wait, 1)}
    adapter = adapter_for(integration)
    if adapter.kind == "pms":
        return run_pms_sync(integration_id, source)
    actor = Actor.vendor(integration, source)
    db.session.commit()  # nothing of ours is open while the vendor is called
    lookups = Lookups(integration_id)  # read once for this sync, dropped when it ends
    outcomes: Counter[str] = Counter()
    try:
        for page in _pages(adapter.poll(), PAGE):
            outcomes.update(ingest_page(lookups, page, "poll", actor))
        outcomes.update(reread_unfinished(integration_id, adapter, actor, lookups))
    except VendorError as exc:
        db.session.rollback()
        failed(db.session.get(ScannerIntegration, integration_id), exc, actor)
        db.session.commit()
        return {"error": str(exc), **outcomes}
    integration = db.session.get(ScannerIntegration, integration_id)
    if adapter.next_cursor is not None:
        integration.sync_cursor = adapter.next_cursor
    previous_error = integration.last_error
    succeeded(integration, actor, recovered=not adapter.skipped)
    if adapter.skipped:
        unreadable(integration, adapter.skipped, actor, previous_error)
        outcomes["unreadable"] = len(adapter.skipped)
    db.session.commit()
    return dict(outcomes)


PAGE = 50  # polled orders whose scans are looked up together (one SELECT), then ingested one by one


def _pages(orders: Iterable[VendorOrder], size: int) -> Iterator[list[VendorOrder]]:
    """The orders of a poll, `size` at a time. Reading on may call the vendor: the caller has
    committed every order before asking for the next page. When the vendor fails, the orders read
    before are still ingested (as they were one by one), then the error goes on."""
    page: list[VendorOrder] = []
    try:
        for order in orders:
            page.append(order)
            if len(page) == size:
                yield page
                page = []
    except VendorError:
        if page:
            yield page
        raise
    if page:
        yield page


def ingest_page(lookups: Lookups, orders: list[VendorOrder], source: str, actor: Actor) -> Counter[str]:
    """Ingest a page of polled orders, each in its own transaction as `ingest_one` does. One SELECT
    reads the content key of every scan the page names: an order whose scan already has its content
    is "unchanged" with no transaction of its own, and one with no scan yet is not looked for again.
    An order met a second time in the page is looked for as usual (its first report may have
    written it)."""
    integration = lookups.integration
    keys = dict(db.session.execute(select(Scan.order_id, Scan.content_key).where(
        Scan.practice_id == integration.practice_id, Scan.vendor == integration.vendor,
        Scan.order_id.in_({order.order_id for order in orders}))).tuples().all())
    db.session.commit()  # nothing open between orders
    outcomes: Counter[str] = Counter()
    seen: set[str] = set()
    for order in orders:
        first = order.order_id not in seen
        seen.add(order.order_id)
        if first and keys.get(order.order_id) == order.content_key():
            outcomes["unchanged"] += 1
            continue
        absent = first and order.order_id not in keys
        outcomes[ingest_one(integration.id, order, source, actor, lookups, absent=absent)] += 1
    return outcomes


REREAD_BATCH = 50  # scans re-read by order ref per sync, in turn (the next sync goes on from there)


def reread_unfinished(integration_id: int, adapter, actor: Actor, lookups: Lookups | None = None) -> Counter[str]:
    """Re-read, by order ref, the scans in a stage the vendor may still change without listing the
    order again (the adapter's `reread_stages`: iTero's Get Orders lists only Ready for Download
    and Lab Review, so iTero Milling, Ready to Ship and Downloaded would never reach the case),
    until they reach a final one. A batch per sync, in turn by scan id (where the last batch ended
    is kept in the integration's settings); scans the poll just brought, dismissed ones and those
    of a closed case are left out. What changed is counted as "reread_<outcome>"."""
    from portal.cases.models import LabCase
    from portal.cases.status import Status
    from portal.scans.models import InboxState

    outcomes: Counter[str] = Counter()
    if not adapter.reread_stages:
        return outcomes
    integration = db.session.get(ScannerIntegration, integration_id)
    after = integration.config.get("reread_after")
    after = after if isinstance(after, int) else 0
    stmt = (select(Scan.id, Scan.rx_id, Scan.order_id).outerjoin(LabCase, LabCase.id == Scan.case_id)
            .where(Scan.integration_id == integration_id, Scan.stage.in_(adapter.reread_stages),
                   Scan.rx_id != "", Scan.inbox != InboxState.DISMISSED,
                   LabCase.id.is_(None) | LabCase.status.in_(Status.open())))
    rows = list(db.session.execute(stmt.where(Scan.id > after).order_by(Scan.id).limit(REREAD_BATCH)))
    if len(rows) < REREAD_BATCH and after:  # round again from the first
        rows += list(db.session.execute(stmt.where(Scan.id <= after).order_by(Scan.id)
                                        .limit(REREAD_BATCH - len(rows))))
    db.session.commit()  # nothing of ours is open while the vendor is called
    for scan_id, ref, order_id in rows:
        if order_id in adapter.polled:
            continue
        order = adapter.fetch(ref)
        outcome = ingest_one(integration_id, order, "poll", actor, lookups) if order is not None else "unchanged"
        if outcome != "unchanged":
            outcomes[f"reread_{outcome}"] += 1
    if rows:
        integration = db.session.get(ScannerIntegration, integration_id)
        integration.set_config(reread_after=rows[-1][0])
    return outcomes


def ingest_one(integration_id: int, order: VendorOrder, source: str, actor: Actor,
               lookups: Lookups | None = None, *, absent: bool = False) -> str:
    """Ingest one order in its own transaction. A concurrent first ingest of the same new order
    (two jobs at once) loses on the unique key; it is then ingested again as an update. A sync
    passes its `lookups` (the integration, labs, practice and providers read once); `absent`: the
    caller has just found no scan of this order."""
    for attempt in (1, 2):
        integration = lookups.integration if lookups else db.session.get(ScannerIntegration, integration_id)
        try:
            with held_head():  # one order's audit rows: the chain head taken and put back once
                result = services.ingest(integration.practice_id, order, actor=actor, source=source,
                                         integration=integration, lookups=lookups,
                                         absent=absent and attempt == 1)
            db.session.commit()
            return result.outcome
        except IntegrityError:
            db.session.rollback()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# -- notifications ------------------------------------------------------------------------------------

def store_notices(integration: ScannerIntegration, notices: list[Notice]) -> int:
    """Store what a verified notification asks for; a key already stored is a repeat (docs/reliability.md W4). After the
    commit, the integration's event job is enqueued unless one is already waiting. Returns how
    many were new."""
    new = 0
    for notice in notices:
        key = notice.key[:100]
        if notice.coalesce:
            key = _coalesced_key(integration.id, notice)
            if key is None:
                continue
        seen = db.session.scalar(select(VendorEvent.id).where(
            VendorEvent.integration_id == integration.id, VendorEvent.event_key == key))
        if seen is not None:
            continue
        db.session.add(VendorEvent(integration_id=integration.id, event_key=key,
                                   kind=notice.kind[:40], order_ref=notice.order_ref[:100]))
        new += 1
    if new:
        db.session.flush()
        enqueue_once_after_commit(events_key(integration.id), SCANNER_EVENTS, integration.id)
    return new


def _coalesced_key(integration_id: int, notice: Notice) -> str | None:
    """None while a re-read of the notice's order waits (the repeat adds nothing); else a key made
    of the notice's key and the newest event of that order, so two copies arriving at once collide
    on the unique key and only one is stored."""
    ref = notice.order_ref[:100]
    waiting = db.session.scalar(select(VendorEvent.id).where(
        VendorEvent.integration_id == integration_id, VendorEvent.order_ref == ref,
        VendorEvent.outcome == "pending").limit(1))
    if waiting is not None:
        return None
    last = db.session.scalar(select(func.max(VendorEvent.id)).where(
        VendorEvent.integration_id == integration_id, VendorEvent.order_ref == ref))
    return f"{notice.key[:80]}@{last or 0}"


WAITING = ("pending", "reading")


def pending_events(integration_id: int) -> list[int]:
    return list(db.session.scalars(select(VendorEvent.id).where(
        VendorEvent.integration_id == integration_id, VendorEvent.outcome.in_(WAITING)).order_by(VendorEvent.id)))


def handle_event(event_id: int, source: str = SCANNER_EVENTS.func) -> str:
    """Re-read the order a stored notification names and ingest it; the event's outcome says what
    came of it. A transient vendor error leaves it pending for the sweep; the caller commits."""
    event = db.session.get(VendorEvent, event_id)
    if event is None or event.outcome not in WAITING:
        return "nothing to do"
    integration = db.session.get(ScannerIntegration, event.integration_id)
    actor = Actor.vendor(integration, source)
    if not integration.active:
        event.outcome, event.handled_at, event.error = "ignored", utcnow(), "the integration is paused"
        return event.outcome
    adapter = adapter_for(integration)
    order_ref = event.order_ref
    event.outcome = "reading"  # from now on, a new notification of this order is a new event
    db.session.commit()  # nothing of ours is open while the vendor is called
    try:
        order = adapter.fetch(order_ref)
    except VendorError as exc:
        db.session.rollback()
        event = db.session.get(VendorEvent, event_id)
        event.error = str(exc)[:300]
        if exc.transient:
            event.outcome = "pending"
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
    queue = get_queue()
    now = utcnow()
    intervals = {"scanner": current_app.config["SCANNER_POLL_SECONDS"], "pms": current_app.config["PMS_SYNC_SECONDS"]}
    polled = 0
    for integration in db.session.scalars(select(ScannerIntegration).where(ScannerIntegration.active.is_(True))):
        try:
            ready = can_sync(integration) and retry_wait(integration) is None
        except VendorError:
            continue
        due = now - dt.timedelta(seconds=intervals[integration.vendor.kind])
        if ready and (integration.last_sync_at is None or integration.last_sync_at <= due):
            polled += enqueue_once(queue, sync_key(integration.id), SCANNER_SYNC, integration.id, window=300)
    cutoff = now - dt.timedelta(seconds=grace_seconds)
    waiting = db.session.scalars(select(VendorEvent.integration_id).where(
        VendorEvent.outcome.in_(WAITING), VendorEvent.received_at <= cutoff).distinct()).all()
    for integration_id in waiting:
        enqueue_now(queue, SCANNER_EVENTS, integration_id, job_id=f"{events_key(integration_id)}-sweep")
    return {"polled": polled, "events": len(waiting)}


def sync_now(integration: ScannerIntegration) -> None:
    """A person asked for a poll now: after the commit, unless one is already waiting."""
    enqueue_once_after_commit(sync_key(integration.id), SCANNER_SYNC, integration.id, window=300)
