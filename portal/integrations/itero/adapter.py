"""iTero (Align's DPMS API, docs/vendors/itero.md): sign-in, pairing, polling, the scan callback,
reading one order, and the Rx calls (Scan Request, Delete Rx, Return to doctor).

Every iTero field name and path is in `itero_wire.py`; this module does the calls:

- Credentials (sealed): `client_id`, `client_secret`. Settings: `base_url` (where discovery is),
  `oauth_base` (token and revoke), `login_url` (the authorize page, default `{oauth_base}/authorize`),
  and after pairing `account_id`, `account_name`, `region`, the discovered `endpoints` and the
  practice's iTero `doctors` (for the Rx).
- Discovery runs before listing accounts, before every token refresh (the contract asks both) and
  on "Test connection"; its URLs are kept and every one is checked against the allow-list before
  it is called (docs/reliability.md W8), so a discovery that points elsewhere stops the integration with the reason.
- Every API call takes its token from `oauth.access_token` (refreshed a minute before the hour is
  up, exactly once across workers, docs/reliability.md W7). A 401 refreshes once and retries once; a second 401 is an
  "auth" error: the sync fails with "connect again". 429 and 5xx are transient: the sync records
  them and the sweep tries later (after Retry-After); nothing sleeps here. A refresh writes on a
  connection of its own, so callers call `accounts`, `test_connection`, `disconnect`, `poll` and
  `fetch` before they write anything in their own transaction (an audit row included); `pair` is
  the exception (see there).
- The callback names only an Rx id and the account: it is checked against the paired account and
  stored as a notice to re-read that Rx through the API, so a forged one changes nothing by itself.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
from sqlalchemy import select, update

from portal import keyring as crypto
from portal.extensions import db
from portal.integrations import oauth
from portal.integrations.base import CallbackRejected, Notice, ScannerAdapter
from portal.integrations.http import VendorError, call, check_host, json_body
from portal.integrations.itero import wire
from portal.integrations.models import ScannerIntegration
from portal.integrations.vendor import OrderStage, Vendor, VendorOrder
from portal.practices.models import utcnow

log = logging.getLogger(__name__)
MAX_PAGES = 1000
_T = ScannerIntegration.__table__


class IteroAdapter(ScannerAdapter):
    vendor = Vendor.ITERO
    # Get Orders lists only the orders in Ready for Download (Completed) and Lab Review (docs/sources.md source 001),
    # and the callback fires only on entering those: an order that moves on to iTero Modeling,
    # Scanning, iTero Milling or Ready to Ship leaves the list silently. So the orders in any stage
    # but the final ones are re-read by their Rx id on every sync (portal/integrations/sync.py).
    reread_stages = frozenset(OrderStage) - {OrderStage.DOWNLOADED, OrderStage.DELETED}

    def __init__(self, integration: ScannerIntegration):
        super().__init__(integration)
        self._endpoints: dict[str, str] | None = None
        self._region = ""

    # -- configuration ---------------------------------------------------------------------------------
    def _setting(self, name: str) -> str:
        value = self.integration.config.get(name)
        return value.strip() if isinstance(value, str) else ""

    def _required(self, name: str, label: str) -> str:
        value = self._setting(name)
        if not value:
            raise VendorError(f"Set iTero's {label} ({name}) in the integration's settings first.", "refused")
        return value

    def _client(self) -> tuple[str, str]:
        data = crypto.unseal(self.integration.credentials)
        client_id, secret = data.get("client_id", ""), data.get("client_secret", "")
        if not client_id or not secret:
            raise VendorError("Enter iTero's client id and client secret first.", "refused")
        return client_id, secret

    def _oauth_url(self, path: str) -> str:
        return wire.url(self._required("oauth_base", "OAuth base URL"), path)

    # -- discovery (docs/reliability.md W8) ----------------------------------------------------------------------------------
    def discover(self, token: str | None = None) -> dict[str, str]:
        """The regional endpoint URLs, each checked against the allow-list before it is kept.

        Discovery comes after the token, so it carries the Bearer like every call after the token
        (docs/vendors/itero.md): `token`, else the access token we hold (which may be the one about to
        be refreshed: discovery comes before a refresh)."""
        base = self._required("base_url", "discovery base URL")
        token = token or oauth.read(self.integration.id).access_token
        data = json_body(call("GET", wire.url(base, wire.DISCOVERY_PATH), vendor=wire.VENDOR, token=token or None),
                         wire.VENDOR)
        found = wire.endpoints(data)
        for name, address in found.items():
            try:
                check_host(address)
            except VendorError as exc:
                raise VendorError(f"iTero's discovery puts the {name} endpoint off our allowed hosts. {exc}",
                                  "host") from None
        self._endpoints, self._region = found, wire.region(data)
        return found

    def _stored_endpoints(self) -> dict[str, str] | None:
        stored = self.integration.config.get("endpoints")
        return stored if isinstance(stored, dict) and all(stored.get(n) for n in wire.REQUIRED_ENDPOINTS) else None

    def endpoints(self, token: str | None = None) -> dict[str, str]:
        if self._endpoints is None:
            stored = self._stored_endpoints()
            if stored is not None:
                self._endpoints = stored
            else:
                self.discover(token)
        return self._endpoints

    def _remember_endpoints(self) -> None:
        """Keep what discovery said on the row (the caller commits)."""
        if self._endpoints is not None and self.integration.config.get("endpoints") != self._endpoints:
            self.integration.set_config(endpoints=self._endpoints, region=self._region)

    def _store_endpoints_now(self) -> None:
        """Discovery during a token refresh: keep changed URLs at once, on a connection of our own
        (the refresh runs inside oauth.access_token, outside the caller's transaction)."""
        with db.engine.begin() as conn:
            settings = conn.execute(select(_T.c.settings).where(_T.c.id == self.integration.id)).scalar_one()
            data = json.loads(settings or "{}")
            if data.get("endpoints") == self._endpoints:
                return
            data.update(endpoints=self._endpoints, region=self._region)
            conn.execute(update(_T).where(_T.c.id == self.integration.id)
                         .values(settings=json.dumps(data, sort_keys=True)))
        db.session.expire(self.integration, ["settings"])

    # -- tokens --------------------------------------------------------------------------------------------
    def _token_call(self, form: dict) -> dict:
        response = call("POST", self._oauth_url(wire.TOKEN_PATH), vendor=wire.VENDOR, data=form, auth=self._client())
        return wire.token_answer(json_body(response, wire.VENDOR))

    def _refresh(self, refresh_token: str) -> dict:
        try:
            self.discover()  # the contract: discovery before a token refresh
        except VendorError as exc:
            # A vendor that no longer takes the old token for discovery: refresh with the endpoints
            # discovery gave last time (the next discovery, with the new token, checks them again).
            if exc.kind != "auth" or not self._stored_endpoints():
                raise
            self._endpoints = self._stored_endpoints()
        self._store_endpoints_now()
        try:
            return self._token_call(wire.refresh_form(refresh_token))
        except VendorError as exc:
            if exc.kind in ("refused", "auth", "not_found"):
                raise VendorError(f"iTero would not refresh our token: {exc}", "auth", exc.status_code) from None
            raise

    def _api(self, method: str, address: str, **kwargs) -> httpx.Response:
        """One API call with a fresh token; a 401 refreshes the token once and tries once more."""
        tokens = oauth.access_token(self.integration.id, self._refresh)
        try:
            return call(method, address, vendor=wire.VENDOR, token=tokens.access_token, **kwargs)
        except VendorError as exc:
            if exc.kind != "auth":
                raise
        tokens = oauth.access_token(self.integration.id, self._refresh, stale_version=tokens.version)
        try:
            return call(method, address, vendor=wire.VENDOR, token=tokens.access_token, **kwargs)
        except VendorError as exc:
            if exc.kind == "auth":
                raise VendorError("iTero refused our access token again right after refreshing it (HTTP 401).",
                                  "auth", exc.status_code) from None
            raise

    # -- sign-in and pairing -----------------------------------------------------------------------------
    def authorize_url(self, state: str, redirect_uri: str) -> str:
        client_id, _ = self._client()
        login = self._setting("login_url") or self._oauth_url(wire.AUTHORIZE_PATH)
        check_host(login)  # the person's browser goes there: it must be iTero's
        query = urlencode(wire.authorize_query(client_id, redirect_uri, state))
        return f"{login}{'&' if '?' in login else '?'}{query}"

    def finish_authorization(self, code: str, redirect_uri: str) -> None:
        """Exchange the code for the tokens that may list accounts and pair (not yet read orders)."""
        tokens = self._token_call(wire.code_form(code, redirect_uri))
        oauth.set_tokens(self.integration, tokens)
        self.integration.connected_at = None  # paired (and so connected) only once an account is chosen

    def accounts(self) -> list[tuple[str, str]]:
        # The contract: discovery before listing accounts for pairing (with the sign-in's token).
        self._required("base_url", "discovery base URL")
        self.discover(oauth.access_token(self.integration.id, self._refresh).access_token)
        rows = wire.accounts(json_body(self._api("GET", self._endpoints["accounts"]), wire.VENDOR))
        self._remember_endpoints()
        return rows

    def pair(self, account_id: str, callback_url: str) -> None:
        """Pair to one account with our callback URL; the new token set replaces the sign-in's.

        It uses the sign-in's token as it is, without the refresh lease: the caller has usually
        just written the new callback key on this row, and a refresh on a connection of its own
        would wait for that write (SQLite's one writer, PostgreSQL's row lock). A sign-in older
        than its hour means signing in again."""
        token = oauth.read(self.integration.id)
        if not token.access_token or (token.expires_at is not None and token.expires_at <= utcnow()):
            raise VendorError("The iTero sign-in has expired; connect again.", "auth")
        try:
            endpoints = self.endpoints(token.access_token)
            offered = dict(wire.accounts(json_body(
                call("GET", endpoints["accounts"], vendor=wire.VENDOR, token=token.access_token), wire.VENDOR)))
            if account_id not in offered:
                raise VendorError(f"iTero offers no account {account_id} to this sign-in.", "refused")
            answer = call("POST", endpoints["pair"], vendor=wire.VENDOR, token=token.access_token,
                          json=wire.pair_body(account_id, callback_url))
        except VendorError as exc:
            if exc.kind == "auth":
                raise VendorError(f"iTero refused the sign-in ({exc}); connect again.", "auth") from None
            raise
        tokens = wire.token_answer(json_body(answer, wire.VENDOR))
        doctors = self._doctors_with(tokens["access_token"], endpoints)
        oauth.set_tokens(self.integration, tokens)
        self._revoke_sign_in(token)
        if self._setting("account_id") != account_id:
            self.integration.sync_cursor = ""  # another account: read its orders from the start
        self.integration.set_config(account_id=account_id, account_name=offered[account_id], doctors=doctors)
        self._remember_endpoints()
        self.integration.connected_at = utcnow()

    def _revoke_sign_in(self, sign_in: oauth.Tokens) -> None:
        """Pairing handed out a new token set: the sign-in's tokens are of no more use to us, so they
        are revoked rather than left alive at iTero. A refusal is logged and changes nothing here
        (the pairing stands; those tokens expire on their own)."""
        for token in (sign_in.refresh_token, sign_in.access_token):
            if not token:
                continue
            try:
                call("POST", self._oauth_url(wire.REVOKE_PATH), vendor=wire.VENDOR, data=wire.revoke_form(token),
                     auth=self._client())
            except VendorError as exc:
                log.warning("integration %s: iTero did not revoke the sign-in's token: %s", self.integration.id, exc)

    def _doctors_with(self, access_token: str, endpoints: dict) -> list[list[str]] | None:
        """The practice's doctors with a token not stored yet (right after pairing); None if iTero
        did not say (the Rx job asks again)."""
        try:
            answer = call("GET", endpoints["practice_configuration"], vendor=wire.VENDOR, token=access_token)
            return [list(d) for d in wire.practice_configuration(json_body(answer, wire.VENDOR)).doctors]
        except VendorError:
            return None

    def disconnect(self) -> None:
        """Unpair, revoke the tokens and forget them. Done here even when iTero does not answer;
        then the integration's last error says what iTero did not confirm."""
        problems = []
        tokens = oauth.read(self.integration.id)
        if tokens.access_token or tokens.refresh_token:
            if self.integration.connected:
                try:
                    self._api("POST", self.endpoints()["unpair"])
                except VendorError as exc:
                    problems.append(f"unpair: {exc}")
            for token in (tokens.refresh_token, tokens.access_token):
                if not token:
                    continue
                try:
                    call("POST", self._oauth_url(wire.REVOKE_PATH), vendor=wire.VENDOR, data=wire.revoke_form(token),
                         auth=self._client())
                except VendorError as exc:
                    problems.append(f"revoke: {exc}")
                    break
        oauth.clear_tokens(self.integration)
        self.integration.connected_at = None
        self.integration.callback_key_hash = None
        self.integration.sync_cursor = ""
        self.integration.set_config(account_id="", account_name="", doctors=None, retry_not_before=None)
        self.integration.last_error = ("Disconnected here, but iTero did not confirm it: " + "; ".join(problems))[
            :500] if problems else ""
        self.integration.last_error_at = utcnow() if problems else None

    def test_connection(self) -> str:
        self._required("base_url", "discovery base URL")
        self.discover(oauth.access_token(self.integration.id, self._refresh).access_token)
        answer = self._api("GET", self._endpoints["practice_configuration"])
        config = wire.practice_configuration(json_body(answer, wire.VENDOR))
        self._remember_endpoints()
        self.integration.set_config(doctors=[list(d) for d in config.doctors])
        account = self._setting("account_name") or self._setting("account_id") or "not paired"
        return (f"account {account}: {_count(len(config.doctors), 'doctor')}, "
                f"{_count(len(config.scanners), 'scanner')}")

    # -- orders --------------------------------------------------------------------------------------------
    def poll(self) -> Iterator[VendorOrder]:
        """Orders updated since the cursor, page by page; the cursor becomes the newest updated_at
        seen. An order that can't be read goes to `skipped` and the others come through.

        The contract does not say whether pages count from 0 or from 1, so no order may be
        skipped either way: the first page asked for is 0 (a vendor that counts from 1 and refuses
        0 is asked for 1 instead, and from then on starts at 1), the next is the page the vendor says it sent plus one, and an
        order seen twice in one poll (a vendor that read 0 as 1 and says nothing) is taken once."""
        endpoints = self.endpoints()
        since = self.integration.sync_cursor or ""
        newest = None
        seen: set[tuple[str, str]] = set()
        page, idle = (1 if self.integration.config.get("orders_first_page") == 1 else 0), 0
        for _ in range(MAX_PAGES):
            try:
                answer = self._api("GET", endpoints["orders"], params=wire.orders_query(since, page))
            except VendorError as exc:
                if page == 0 and exc.kind == "refused" and exc.status_code == 400:
                    page = 1  # pages count from 1 here: remembered, so the next poll starts there
                    self.integration.set_config(orders_first_page=1)
                    continue
                raise
            raws, more, echoed = wire.orders_page(json_body(answer, wire.VENDOR))
            fresh = 0
            for raw in raws:
                key = (wire.order_ref(raw), str(raw.get("updated_at")) if isinstance(raw, dict) else "")
                if key in seen:
                    continue
                seen.add(key)
                fresh += 1
                moment = wire.order_time(raw)
                if moment is not None and (newest is None or moment > newest):
                    newest = moment
                try:
                    order = wire.order(raw, endpoints)
                except VendorError as exc:
                    self.skipped.append((wire.order_ref(raw), str(exc)))
                    continue
                self.polled.add(order.order_id)
                yield order
            idle = 0 if fresh else idle + 1
            if not more or idle >= 2:  # two pages in a row with nothing new: it is repeating itself
                break
            page = (echoed if echoed is not None else page) + 1
        else:
            raise VendorError(f"iTero still had more pages of orders after {MAX_PAGES}; we will try again.",
                              "transient")
        if newest is not None:
            self.next_cursor = wire.cursor(newest)

    def fetch(self, order_ref: str) -> VendorOrder | None:
        """The order of an Rx as it is now; None when iTero knows no scan of it (404)."""
        endpoints = self.endpoints()
        try:
            answer = self._api("GET", wire.order_by_rx_url(endpoints, order_ref))
        except VendorError as exc:
            if exc.kind == "not_found":
                return None
            raise
        return wire.order(json_body(answer, wire.VENDOR), endpoints)

    def verify_callback(self, headers, raw_body: bytes) -> list[Notice]:
        try:
            rx_id, account = wire.callback(raw_body)
        except ValueError as exc:
            raise CallbackRejected(400, f"not an iTero scan notification: {exc}") from None
        paired = self._setting("account_id")
        if not self.integration.connected or not paired:
            raise CallbackRejected(409, "this integration is not paired to an iTero account")
        if account != paired:
            raise CallbackRejected(422, "this notification address belongs to another iTero account")
        digest = hashlib.sha256(rx_id.encode()).hexdigest()[:40]
        return [Notice(key=f"itero-rx-{digest}", kind="scan", order_ref=rx_id, coalesce=True)]

    # -- the Rx ---------------------------------------------------------------------------------------------
    def practice_configuration(self) -> wire.PracticeConfiguration:
        answer = self._api("GET", self.endpoints()["practice_configuration"])
        return wire.practice_configuration(json_body(answer, wire.VENDOR))

    def create_rx(self, case, doctor_id: str) -> str:
        """Scan Request: the Rx goes to the scanner; returns its Rx id."""
        answer = self._api("POST", self.endpoints()["scan_request"], json=wire.scan_request(case, doctor_id))
        return wire.rx_id(json_body(answer, wire.VENDOR))

    def delete_rx(self, rx_id: str) -> None:
        """Delete Rx: VendorError with status 409 once the Rx has a scan."""
        self._api("DELETE", wire.delete_rx_url(self.endpoints(), rx_id))

    def return_to_doctor(self, order_id: str, reason: str) -> None:
        self._api("POST", wire.return_to_doctor_url(self.endpoints(), order_id),
                  json=wire.return_to_doctor_body(reason))


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
