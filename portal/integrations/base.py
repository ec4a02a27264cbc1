"""What every adapter of an outside system offers (portal/integrations/registry.py finds the one of
an integration).

An adapter wraps one integration row and speaks its vendor's API, keeping every vendor field name
and path in its own module (one mapping module per vendor). There are two capabilities over one
base: `ScannerAdapter` (iTero, Medit, 3Shape: scans come in) and `PmsAdapter` (Open Dental; Dentrix,
Eaglesoft or Curve would be others: the practice's patients, providers, appointments and
laboratories come in, lab cases go back out). Both share `Adapter`: the integration row and its
sealed credentials, `test_connection()`, `disconnect()`, whether it signs in with OAuth, whether it
is polled. Jobs and views only use these interfaces.

A scanner adapter:

- `poll()`: the orders changed since the integration's `sync_cursor`, as VendorOrders; sets
  `next_cursor` for the sync job to store once they are all ingested, and lists in `skipped` the
  orders it could not read (one malformed order does not hold back the others).
- `fetch(order_ref)`: one order as it is now (a callback or webhook only says "look at this").
- `verify_callback(request)`: check a vendor's notification and say what to re-read.
- `test_connection()`: a short sentence of what the vendor answered, or VendorError.
- `authorize_url(state, redirect_uri)` / `finish_authorization(code, redirect_uri)`: the OAuth 2
  authorization-code grant, where the vendor has one (None for 3Shape's file exports).
- `accounts()` / `pair(account_id, callback_url)`: the pairing step after signing in, where the
  vendor has one (iTero: choose the account to pair to); `accounts()` is None when there is none.
- `disconnect()`: revoke and forget the tokens.

A PMS adapter (portal/integrations/pms.py drives it):
- `RESOURCES`: what it reads, in the order a sync applies them (providers before appointments).
- `read(resource, since)`: the resource's rows changed at or after `since` (the vendor's own time
  stamp, None for everything), as pages of neutral dicts (portal/integrations/pms.py names their
  keys); `server_time` is set from the first answer, the next sync's `since`.
- `lab_cases(patient_ref)`, `create_lab_case(body)`, `update_lab_case(ref, body)`: the write-back.

Adapters raise portal.integrations.http.VendorError for anything the vendor refused or could not do.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from portal.integrations.http import VendorError
from portal.integrations.models import ScannerIntegration
from portal.integrations.oauth import clear_tokens
from portal.integrations.vendor import Vendor, VendorOrder


class CallbackRejected(Exception):
    """A vendor notification we refuse: `status` (401, 404, 422...) and a message for the JSON error."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Notice:
    """One thing a verified notification asks us to re-read: `key` makes a repeat delivery a no-op
    (docs/reliability.md W4), `order_ref` is what to fetch (iTero's Rx id, Medit's case uuid).

    `coalesce` is for vendors that send no event id (iTero's callback carries only the Rx id): the
    notice is stored unless a re-read of the same `order_ref` is still waiting, so a repeat while
    one waits is one event, and a callback after the re-read started (a rescan) is a new one.
    """

    key: str
    kind: str
    order_ref: str
    coalesce: bool = False


class Adapter:
    """What every adapter has, scanner or PMS."""

    vendor: Vendor
    kind = "scanner"  # or "pms"
    uses_oauth = True
    polls = True

    def __init__(self, integration: ScannerIntegration):
        self.integration = integration

    def test_connection(self) -> str:
        raise NotImplementedError

    def authorize_url(self, state: str, redirect_uri: str) -> str | None:
        return None

    def finish_authorization(self, code: str, redirect_uri: str) -> None:
        raise VendorError(f"{self.vendor.label} has no sign-in to finish.", "refused")

    def accounts(self) -> list[tuple[str, str]] | None:
        """(account id, label) to pair to after signing in; None when the vendor has no pairing step."""
        return None

    def pair(self, account_id: str, callback_url: str) -> None:
        raise VendorError(f"{self.vendor.label} has no pairing step.", "refused")

    def disconnect(self) -> None:
        clear_tokens(self.integration)
        self.integration.connected_at = None

    def verify_callback(self, headers, raw_body: bytes) -> list[Notice]:
        raise CallbackRejected(404, f"{self.vendor.label} does not send notifications here")


class ScannerAdapter(Adapter):
    """A scanner vendor: orders (scans) come in."""

    kind = "scanner"
    # True when fetch() finding nothing means the vendor deleted the order: the order ref is the
    # order id itself (Medit's case uuid), so a 404 on re-reading it is a deletion, and the scan is
    # marked deleted at the vendor. False where the ref is something else (iTero's Rx id).
    deletes_when_missing = False
    # Stages whose orders the vendor may change without listing them again (or notifying us): a
    # sync re-reads its scans in these stages by order ref (fetch), a batch at a time in turn.
    reread_stages: frozenset = frozenset()

    def __init__(self, integration: ScannerIntegration):
        super().__init__(integration)
        self.next_cursor: str | None = None
        # Orders of a poll that could not be read: (order ref, why). The sync records them and
        # goes on with the others.
        self.skipped: list[tuple[str, str]] = []
        # Order ids a poll brought: a re-read of the same order in that sync is not needed.
        self.polled: set[str] = set()

    def poll(self) -> Iterable[VendorOrder]:
        raise NotImplementedError

    def fetch(self, order_ref: str) -> VendorOrder | None:
        raise NotImplementedError


class PmsAdapter(Adapter):
    """A practice management system: its records come in by `read`, lab cases go back. No OAuth:
    the keys are in the integration's sealed credentials."""

    kind = "pms"
    uses_oauth = False
    RESOURCES: tuple[str, ...] = ("providers", "laboratories", "patients", "appointments")

    def __init__(self, integration: ScannerIntegration):
        super().__init__(integration)
        self.server_time: str | None = None
        self.requests = 0  # calls made, for the sync's progress and the bench

    def read(self, resource: str, since: str | None, patient_ref: str | None = None) -> Iterator[list[dict]]:
        """`patient_ref`: only that patient's rows (the appointments of a patient a person just matched)."""
        raise NotImplementedError

    def lab_cases(self, patient_ref: str) -> list[dict]:
        raise NotImplementedError

    def create_lab_case(self, body: dict) -> dict:
        raise NotImplementedError

    def update_lab_case(self, ref: str, body: dict) -> dict:
        raise NotImplementedError

    def disconnect(self) -> None:
        """A PMS has no tokens to revoke: its keys are forgotten (enter them again to reconnect)."""
        self.integration.credentials = ""
        self.integration.connected_at = None
