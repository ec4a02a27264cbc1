"""Open Dental's REST API (docs/vendors/opendental.md) behind the PMS adapter interface.

Every request carries `Authorization: ODFHIR {DeveloperKey}/{CustomerKey}`, both keys from the
integration's sealed credentials, and goes through portal/integrations/http.py (the allow-list,
timeouts, the answer sorted into a VendorError). The base URL is the integration's setting (the
cloud service, or the practice's own Local API / API Service); a DSO's ClinicNum, when set,
filters what is read.

Reading pages: lists are ordered by primary key, 100 at a time (`Limit`, `Offset`). Each next page
starts one row before the end of the last (`Offset` + 99), so that row comes back first; if a
later one comes back first, rows before it vanished meanwhile and the reader steps back a page
(rows already handed over are dropped by primary key), so nothing in the range is skipped. Rows that
appear while the pages are read land after the last primary key and are read in the same pass;
rows changed behind the reader are found by the next sync, whose `since` is `server_time`: the
clock of Open Dental's server when this read began (`serverDateTime` of the first answer), not
the newest DateTStamp seen.
"""
from __future__ import annotations

from collections.abc import Iterator

from portal import keyring as crypto
from portal.integrations import http as vendor_http
from portal.integrations.base import PmsAdapter
from portal.integrations.http import VendorError
from portal.integrations.opendental import wire
from portal.integrations.vendor import Vendor

LABEL = "Open Dental"
MAX_STEP_BACKS = 20


class OpenDentalAdapter(PmsAdapter):
    vendor = Vendor.OPENDENTAL
    RESOURCES = PmsAdapter.RESOURCES + ("deleted_appointments",)
    _target: tuple[str, dict] | None = None  # (base URL, headers) read once by `read`

    # --- the one way a request is made ---
    def _base(self) -> str:
        base = (self.integration.config.get("base_url") or "").rstrip("/")
        if not base:
            raise VendorError("Open Dental has no base URL set; edit the integration.", "refused")
        return base

    def _auth(self) -> dict:
        try:
            keys = crypto.unseal(self.integration.credentials)
        except crypto.CredentialsError as exc:
            raise VendorError(str(exc), "refused") from exc
        developer, customer = keys.get("developer_key", ""), keys.get("customer_key", "")
        if not developer or not customer:
            raise VendorError("Enter Open Dental's developer key and customer key first.", "refused")
        return {"Authorization": f"ODFHIR {developer}/{customer}"}

    def _call(self, method: str, path: str, **kwargs):
        self.requests += 1
        base, headers = self._target or (self._base(), self._auth())
        response = vendor_http.call(method, f"{base}/{path}", vendor=LABEL, headers=headers, **kwargs)
        try:
            return vendor_http.parsed(response)
        except ValueError:
            raise VendorError(f"{LABEL} sent an answer that is not JSON (HTTP {response.status_code}, "
                              f"{path}); nothing of it was kept.", "refused", response.status_code) from None

    def _list(self, path: str, params: dict) -> list[dict]:
        data = self._call("GET", path, params=params)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise VendorError(f"{LABEL} sent JSON of an unexpected shape for {path} (a list of objects was "
                              "expected); nothing of it was kept.", "refused")
        return data

    # --- the interface ---
    def test_connection(self) -> str:
        rows = self._list(wire.PATHS["providers"], {"Limit": 1})
        return f"{LABEL} answered: the keys work ({'a provider' if rows else 'no providers'} listed)."

    def read(self, resource: str, since: str | None, patient_ref: str | None = None) -> Iterator[list[dict]]:
        """Pages of parsed rows; a row that can't be read is recorded in `skipped` and left out.
        The settings are read here, at once: the pages may be fetched on another thread than the
        one whose session holds the integration row (portal/integrations/pms.py reads ahead)."""
        self._target = (self._base(), self._auth())
        params: dict = {"Limit": wire.LIMIT}
        if resource == "deleted_appointments":
            # History has no DateTStamp filter: the day of the mark on (rows of that day read before
            # come again and change nothing), only deletions.
            params.update(wire.DELETED)
            if since:
                params["dateStart"] = since[:10]
        elif since:
            params[wire.STAMP] = since
        clinic = str(self.integration.config.get("clinic_num") or "").strip()
        if clinic and resource in ("patients", "appointments", "deleted_appointments"):
            params["ClinicNum"] = clinic
        if patient_ref and resource == "appointments":
            params["PatNum"] = patient_ref
        self.server_time = None
        self.skipped: list[tuple[str, str]] = []
        return self._pages(resource, params)

    def _pages(self, resource: str, params: dict) -> Iterator[list[dict]]:
        path = wire.PATHS[resource]
        parse = wire.PARSERS[resource]
        offset, last_key, step_backs = 0, None, 0
        while True:
            rows = self._list(path, {**params, "Offset": offset})
            if self.server_time is None:
                self.server_time = next((str(r[wire.SERVER_TIME]) for r in rows if r.get(wire.SERVER_TIME)), None)
            keys = []
            for row in rows:
                try:
                    keys.append(wire.key_of(resource, row))
                except wire.WireError as exc:
                    raise VendorError(f"{LABEL} sent a {resource} row without its key ({exc}); nothing of "
                                      "that page was kept.", "refused") from None
            if last_key is not None and offset and (not keys or keys[0] > last_key):
                if step_backs >= MAX_STEP_BACKS:
                    raise VendorError(f"{LABEL}'s {resource} kept moving while being read; the sync will "
                                      "try again.", "transient")
                step_backs += 1
                offset = max(0, offset - (wire.LIMIT - 1))
                continue
            page = []
            for key, row in zip(keys, rows):
                if last_key is not None and key <= last_key:
                    continue  # handed over already (the overlap row, or a step back)
                try:
                    page.append(parse(row))
                except wire.WireError as exc:
                    self.skipped.append((f"{wire.PRIMARY_KEYS[resource]} {key}", str(exc)))
            if page:
                yield page
            if len(rows) < wire.LIMIT:
                return
            last_key = max(keys[-1], last_key or 0)
            offset += len(rows) - 1

    def lab_cases(self, patient_ref: str) -> list[dict]:
        rows, offset = [], 0
        while True:
            page = self._list(wire.PATHS["labcases"], {"PatNum": patient_ref, "Limit": wire.LIMIT, "Offset": offset})
            rows += page
            if len(page) < wire.LIMIT:
                return rows
            offset += len(page)

    def create_lab_case(self, body: dict) -> dict:
        data = self._call("POST", wire.PATHS["labcases"], json=body)
        if not isinstance(data, dict) or not data.get("LabCaseNum"):
            raise VendorError(f"{LABEL} created a lab case but sent no LabCaseNum back.", "transient")
        return data

    def update_lab_case(self, ref: str, body: dict) -> dict:
        data = self._call("PUT", f"{wire.PATHS['labcases']}/{ref}", json=body)
        return data if isinstance(data, dict) else {}
