"""Medit Link through its OAuth 2 API (docs/vendors/medit.md): sign-in, polling the clinic's cases,
reading one case, and the signed webhooks. Field names, paths and headers are in medit_wire.py.

The integration row holds, sealed (`credentials`): `client_id` and `client_secret` (32 characters
each, from Medit's developer console) and `webhook_secret` (the webhook signing secret, optional:
without it only polling brings scans in), with `previous_webhook_secret` for a day after it was
replaced (docs/reliability.md W3). In plain settings: `auth_host` and `resource_host` (production by default; Medit's
stage hosts, or the vendor sandbox, by configuration, each checked against SCANNER_ALLOWED_HOSTS
before any call: docs/reliability.md W8), `scopes` (USER GROUP CASE FILE ORDER offline_access unless set), and what
sign-in learnt from /v1/me: `group_uuid` (the clinic's group, sent as x-meditlink-group-uuid on every
group call), `group_name`, `user`, `email`. The admin pages store and check the typed values
(portal/integrations/services.py SETTINGS: the 32-character length, the hosts on the allow-list, the
previous webhook secret kept on a change).

Every resource call sends `Authorization: Bearer`, `x-meditlink-client-id`, and the group header on
group calls. The access token comes from portal/integrations/oauth.py (refreshed before it expires,
exactly once across workers: docs/reliability.md W7); a 401 refreshes once (`stale_version`) and tries again, and a
second 401 is an "auth" VendorError: the integration must be connected again.

Polling (`poll`): /v1/cases/search over the window [cursor - OVERLAP, now] in epoch milliseconds,
100 a page, zero-based pages until totalPages. The cursor becomes the window's end; the overlap
covers cases that reach Medit's search late and a clock a little apart from ours (re-reading a case
that did not change is a no-op: its content key is the same). If the number of matches changes
while we page (a case updated mid-poll moves out of the window and the pages shift), the cursor
stays, so the next poll reads the whole window again and nothing is skipped. The first poll looks
back FIRST_SYNC.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from urllib.parse import urlencode

from portal import keyring as crypto
from portal.integrations import oauth
from portal.integrations.base import CallbackRejected, Notice, ScannerAdapter
from portal.integrations.http import VendorError, call, check_host, json_body
from portal.integrations.medit import wire
from portal.integrations.vendor import Vendor, VendorOrder
from portal.nul import holds_nul
from portal.practices.models import utcnow

log = logging.getLogger(__name__)
LABEL = wire.LABEL
OVERLAP = dt.timedelta(minutes=5)
FIRST_SYNC = dt.timedelta(days=7)
MAX_PAGES = 1000  # a runaway guard: 100,000 changed cases in one window is not a clinic


class MeditAdapter(ScannerAdapter):
    vendor = Vendor.MEDIT
    deletes_when_missing = True  # the order ref is the case uuid: a 404 on re-reading it is a deletion

    def __init__(self, integration):
        super().__init__(integration)
        self._id = integration.id
        self.skipped: list[tuple[str, str]] = []  # cases of a poll we could not read: (uuid, why)
        self._secrets: dict | None = None
        self._settings: dict | None = None

    # -- what is stored ---------------------------------------------------------------------------------

    def credentials(self) -> dict:
        if self._secrets is None:
            self._secrets = crypto.unseal(self.integration.credentials or "")
        return self._secrets

    def settings(self) -> dict:
        if self._settings is None:
            self._settings = self.integration.config
        return self._settings

    def _client(self) -> tuple[str, str]:
        creds = self.credentials()
        if not creds.get("client_id") or not creds.get("client_secret"):
            raise VendorError(f"Enter the {LABEL} client ID and secret first.", "refused")
        return creds["client_id"], creds["client_secret"]

    def _auth_host(self) -> str:
        return self.settings().get("auth_host") or wire.PRODUCTION_AUTH

    def _resource_host(self) -> str:
        return self.settings().get("resource_host") or wire.PRODUCTION_RESOURCES

    def _group(self) -> str:
        group = self.settings().get("group_uuid", "")
        if not group:
            raise VendorError(f"{LABEL} has not told us the clinic's group yet: connect it again.", "auth")
        return group

    # -- sign-in ---------------------------------------------------------------------------------------

    def authorize_url(self, state: str, redirect_uri: str) -> str:
        client_id, _ = self._client()
        url = f"{self._auth_host()}{wire.AUTHORIZE_PATH}?" + urlencode(
            wire.authorize_params(client_id, redirect_uri, self.settings().get("scopes") or wire.SCOPES, state))
        check_host(url)  # the browser goes there: only to a host we would call ourselves
        return url

    def finish_authorization(self, code: str, redirect_uri: str) -> None:
        """Trade the code for tokens, learn the clinic's group from /v1/me, and only then store
        both (a failure leaves the integration as it was). The caller checked `state`, audits and
        commits."""
        client_id, client_secret = self._client()
        response = call("POST", self._auth_host() + wire.TOKEN_PATH, vendor=LABEL, auth=(client_id, client_secret),
                        data=wire.code_form(code, redirect_uri), headers={"Accept": "application/json"})
        tokens = json_body(response, LABEL)
        access = tokens.get("access_token")
        if not isinstance(access, str) or not access:
            raise VendorError(f"{LABEL}'s token answer holds no access_token.", "refused")
        if not tokens.get("refresh_token"):
            raise VendorError(f"{LABEL} gave no refresh token (was the {wire.OFFLINE_SCOPE} scope granted?); "
                              "without one the connection would end within the hour.", "refused")
        url = self._resource_host() + wire.ME_PATH
        me = wire.me(json_body(call("GET", url, vendor=LABEL, token=access, headers=wire.headers(client_id)), LABEL))
        if not me["group_uuid"]:
            raise VendorError(f"The {LABEL} user {me['email'] or me['user'] or ''} belongs to no group (clinic); "
                              "sign in as a member of the clinic's group.", "refused")
        if me["group_uuid"] != self.settings().get("group_uuid"):
            self.integration.sync_cursor = ""  # another clinic: read its recent cases from the start
        oauth.set_tokens(self.integration, tokens)
        self.integration.set_config(group_uuid=me["group_uuid"], group_name=me["group_name"], user=me["user"],
                                    email=me["email"])
        self.integration.connected_at = utcnow()
        self._settings = None

    def test_connection(self) -> str:
        me = wire.me(self._get(wire.ME_PATH, group=False))
        who = me["user"] + (f" ({me['email']})" if me["email"] else "") if me["user"] else me["email"] or "a user"
        text = f"{LABEL} answered: signed in as {who}, group {me['group_name'] or me['group_uuid'] or 'none'}."
        if me["group_uuid"] != self.settings().get("group_uuid"):
            raise VendorError(f"{text} That is not the group we connected to: connect again.", "refused")
        return text

    # -- reading cases -----------------------------------------------------------------------------------

    def poll(self) -> Iterator[VendorOrder]:
        """The cases changed in [cursor - OVERLAP, now], page by page (see the module's docstring)."""
        now = utcnow()
        cursor = self.integration.sync_cursor
        start = int(cursor) - int(OVERLAP.total_seconds() * 1000) if cursor.isdigit() else \
            wire.epoch_ms(now - FIRST_SYNC)
        end = wire.epoch_ms(now)
        start, page, totals, complete = max(start, 0), 0, set(), False
        while page < MAX_PAGES:
            body = self._get(wire.SEARCH_PATH, params=wire.search_params(start, end, page, wire.PAGE_SIZE))
            cases, total_pages, total = wire.search_page(body)
            totals.add(total if total is not None else total_pages)
            for case in cases:
                order = self._order(case, strict=False)
                if order is not None:
                    yield order
            page += 1
            if page >= total_pages or not cases:
                complete = True
                break
        if not complete:
            log.warning("Medit integration %s: more than %s pages changed in one window; the cursor stays",
                        self._id, MAX_PAGES)
        self.next_cursor = str(end) if complete and len(totals) == 1 else None

    def fetch(self, order_ref: str) -> VendorOrder | None:
        """The case as Medit has it now; None when Medit does not know it (deleted)."""
        try:
            body = self._get(wire.case_path(order_ref))
        except VendorError as exc:
            if exc.kind == "not_found":
                return None
            raise
        return self._order(body)

    def download_link(self, file_ref: str) -> tuple[str, str]:
        """(a download URL, its file name) for one file, asked of Medit now: the link expires after
        minutes, which is why the reference we keep is the files endpoint (medit_wire.file_url).
        The URL is for a person's browser; Lab Manager does not fetch it."""
        url, name = wire.download(self._get(wire.file_path(file_ref), params=wire.FILE_PARAMS))
        if not url:
            raise VendorError(f"{LABEL} gave no download link for this file.", "refused")
        return url, name

    def _order(self, case: dict, strict: bool = True) -> VendorOrder | None:
        try:
            return wire.case_to_order(case, self._resource_host())
        except ValueError as exc:
            if strict:
                raise VendorError(f"{LABEL} sent a case we can't read ({exc}).", "refused") from exc
            log.warning("Medit integration %s: a case we can't read was skipped (%s)", self._id, exc)
            self.skipped.append((wire.case_uuid(case), f"{LABEL} sent a case we can't read ({exc})."))
            return None

    # -- webhooks ----------------------------------------------------------------------------------------

    def verify_callback(self, headers, raw_body: bytes) -> list[Notice]:
        """A Medit webhook: `x-meditlink-signature` must be the hex HMAC-SHA256 of the raw body with
        the webhook secret (or, during a switch, the one it replaced: docs/reliability.md W3), compared in constant
        time; anything else is a 401 and nothing is stored (docs/reliability.md W1). Only then is the body read.

        Each case the body names becomes a Notice to re-read that case through the API (docs/reliability.md W6: the
        body itself is never applied). Its key is the SHA-256 of the raw body: Medit sends a
        repeated delivery byte for byte, so it is stored once (docs/reliability.md W4), while a later event about the
        same case differs (its dateIssued, its content) and is a new one.

        Freshness (docs/reliability.md W2): Medit signs no delivery timestamp (dateIssued is in the signed body, but a
        retry repeats it, so an age limit would drop Medit's own late retries). A replayed body is
        harmless instead: if we stored it, it is a repeat; if not, handling it only re-reads the
        case as Medit has it now, with our credentials, so it can't bring back an old state.
        """
        wanted = self._webhook_secrets()
        if not wanted:
            raise CallbackRejected(401, f"{LABEL} webhooks are not set up here: no signing secret is stored")
        given = (headers.get(wire.SIGNATURE_HEADER) or "").strip().lower().encode("utf-8", "replace")
        if not given:
            raise CallbackRejected(401, f"the {wire.SIGNATURE_HEADER} header is missing")
        good = False
        for secret in wanted:  # every secret is tried: the time taken does not say which matched
            expected = hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest().encode()
            good = hmac.compare_digest(expected, given) or good
        if not good:
            raise CallbackRejected(401, f"the {wire.SIGNATURE_HEADER} does not match the body")
        try:
            body = json.loads(raw_body)
        except ValueError:
            raise CallbackRejected(422, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise CallbackRejected(422, "the body is not a JSON object")
        if holds_nul(body):
            raise CallbackRejected(422, "the body holds a NUL character")
        kind = wire.webhook_kind(body, headers.get(wire.EVENT_HEADER) or "")
        digest = hashlib.sha256(raw_body).hexdigest()
        cases = wire.webhook_case_uuids(body)
        return [Notice(digest if len(cases) == 1 else hashlib.sha256(f"{digest}:{case}".encode()).hexdigest(),
                       kind, case) for case in cases]

    def _webhook_secrets(self) -> list[str]:
        creds = self.credentials()
        found = [creds["webhook_secret"]] if creds.get("webhook_secret") else []
        if creds.get("previous_webhook_secret") and _before(self.settings().get("previous_webhook_secret_until")):
            found.append(creds["previous_webhook_secret"])
        return found

    # -- HTTP ----------------------------------------------------------------------------------------------

    def _get(self, path: str, *, group: bool = True, params: dict | None = None) -> dict:
        """GET a resource path with a valid token: a 401 refreshes once and tries again."""
        url = self._resource_host() + path
        check_host(url)  # before any token work: nothing is sent anywhere for a host off the list (docs/reliability.md W8)
        client_id, _ = self._client()
        heads = wire.headers(client_id, self._group() if group else None)
        tokens = oauth.access_token(self._id, self._refresh)
        try:
            return json_body(call("GET", url, vendor=LABEL, token=tokens.access_token, headers=heads,
                                  params=params), LABEL)
        except VendorError as exc:
            if exc.kind != "auth":
                raise
        tokens = oauth.access_token(self._id, self._refresh, stale_version=tokens.version)
        try:
            return json_body(call("GET", url, vendor=LABEL, token=tokens.access_token, headers=heads,
                                  params=params), LABEL)
        except VendorError as exc:
            if exc.kind == "auth":
                raise VendorError(f"{LABEL} refused our access even after a token refresh (HTTP 401).", "auth",
                                  401) from exc
            raise

    def _refresh(self, refresh_token: str) -> dict:
        """One refresh call (oauth.access_token makes sure only one worker makes it)."""
        client_id, client_secret = self._client()
        try:
            response = call("POST", self._auth_host() + wire.TOKEN_PATH, vendor=LABEL,
                            auth=(client_id, client_secret), data=wire.refresh_form(refresh_token),
                            headers={"Accept": "application/json"})
        except VendorError as exc:
            if exc.kind in ("auth", "refused"):  # invalid_grant, invalid_client: only a new sign-in helps
                raise VendorError(f"{LABEL} would not renew our access: {exc}.", "auth", exc.status_code) from exc
            raise
        return json_body(response, LABEL)


def _before(until) -> bool:
    """Whether now is before the stored ISO time `until` (False when there is none)."""
    try:
        return bool(until) and dt.datetime.fromisoformat(until) > utcnow()
    except (TypeError, ValueError):
        return False
