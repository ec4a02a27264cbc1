"""How an integration's last sync ended, kept on the integration for the admin pages: its last
success, its last error (audited when it changes), a vendor's Retry-After, and the pause that a
host off the allow-list or a PMS refusing our keys puts it in. Used by every kind of sync (scanners
in sync.py, practice management systems in pms.py)."""
from __future__ import annotations

import datetime as dt
import logging

from portal.audit.actor import Actor
from portal.audit.record import record
from portal.integrations.http import VendorError
from portal.integrations.models import ScannerIntegration
from portal.practices.models import utcnow

log = logging.getLogger(__name__)


def retry_wait(integration: ScannerIntegration) -> float | None:
    """Seconds the vendor asked us to wait before the next call (its Retry-After), or None."""
    value = integration.config.get("retry_not_before")
    if not value:
        return None
    try:
        left = (dt.datetime.fromisoformat(value) - utcnow()).total_seconds()
    except (TypeError, ValueError):
        return None
    return left if left > 0 else None


def succeeded(integration: ScannerIntegration, actor: Actor, recovered: bool = True) -> None:
    """The vendor answered. `recovered=False`: it did, but something of its answer is recorded as
    the integration's error instead (orders that could not be read)."""
    now = utcnow()
    integration.last_sync_at = integration.last_success_at = now
    if integration.config.get("retry_not_before"):
        integration.set_config(retry_not_before=None)
    if integration.last_error and recovered:
        record("scanner.sync_recovered", "scanner_integration", integration.id,
               before={"last_error": integration.last_error}, after={"last_error": ""}, actor=actor,
               practice_id=integration.practice_id)
        integration.last_error, integration.last_error_at = "", None


def failed(integration: ScannerIntegration, exc: VendorError, actor: Actor) -> None:
    now = utcnow()
    message = str(exc)[:500]
    pauses = exc.kind == "auth" and integration.vendor.kind == "pms"
    if exc.kind == "auth":
        message = (f"Paused: {message} Check the keys under Settings → Integrations, then resume it."
                   if pauses else f"{message} Connect the integration again (Settings → Integrations).")[:500]
    if exc.kind == "host":
        message = f"Stopped: {message} Check the vendor's addresses, then resume the integration."[:500]
    integration.last_sync_at = now
    if integration.last_error != message:
        record("scanner.sync_failed", "scanner_integration", integration.id,
               before={"last_error": integration.last_error}, after={"last_error": message, "kind": exc.kind},
               actor=actor, practice_id=integration.practice_id, outcome="error")
    integration.last_error, integration.last_error_at = message, now
    if exc.retry_after:
        integration.set_config(retry_not_before=(now + dt.timedelta(seconds=exc.retry_after)).isoformat())
    if (exc.kind == "host" or pauses) and integration.active:
        # A host off the allow-list (nothing was sent there), or a PMS that refused our keys: nothing
        # more is tried until a person looks.
        integration.active = False
        record("scanner.stopped", "scanner_integration", integration.id, before={"active": True},
               after={"active": False, "reason": message}, actor=actor, practice_id=integration.practice_id,
               outcome="error")


def unreadable(integration: ScannerIntegration, skipped: list[tuple[str, str]], actor: Actor,
               previous_error: str) -> None:
    """Orders of a poll the adapter could not read: each logged and audited, the first named in the
    integration's last error (not audited again while the same error stands)."""
    first_ref, first_why = skipped[0]
    more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
    message = f"{len(skipped)} order(s) could not be read and were skipped{more}: {first_why}"[:500]
    for ref, why in skipped:
        log.warning("integration %s: order %s skipped: %s", integration.id, ref or "?", why)
    if message != previous_error:
        for ref, why in skipped:
            record("scanner.order_unreadable", "scanner_integration", integration.id,
                   after={"order": ref, "error": why[:300]}, actor=actor, practice_id=integration.practice_id,
                   outcome="error")
    integration.last_error, integration.last_error_at = message, utcnow()
