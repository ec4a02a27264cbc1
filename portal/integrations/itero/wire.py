"""Every iTero field name, path and status word, in one module (docs/vendors/itero.md).

The contract's "Wire shapes the adapter targets" are our assumption until Align's partner
specification is in hand; when it is, this file is what changes. Nothing outside it names an iTero
field. It holds no state and makes no calls: `portal/integrations/itero/adapter.py` does the HTTP and the
tokens and asks this module how to build each request and how to read each answer.

Reading is defensive: a field of the wrong type or a required field missing raises VendorError
(kind "refused") naming the order and what is wrong, never a KeyError or a TypeError; a field we
can do without (a jaw, a size, the lab) is dropped when it is odd rather than refusing the order.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from urllib.parse import quote

from portal.integrations.http import VendorError
from portal.nul import holds_nul
from portal.integrations.vendor import Asset, Jaw, OrderStage, PatientRef, RxItem, Vendor, VendorOrder
from portal.scans.services import restoration_for

VENDOR = "iTero"

# -- OAuth and discovery (paths under the configured oauth_base and base_url) -------------------------
AUTHORIZE_PATH = "authorize"  # the login page when no login_url is configured: {oauth_base}/authorize
TOKEN_PATH = "token"
REVOKE_PATH = "revoke"
DISCOVERY_PATH = "discovery"

# The endpoints discovery must name (docs/vendors/itero.md), and ours that it may name: "return to
# doctor" is in Align's Lab Connector overview (docs/sources.md source 004) but not in the contract's discovery list;
# its path and body are our assumption (the sandbox implements them).
REQUIRED_ENDPOINTS = ("accounts", "pair", "unpair", "practice_configuration", "scan_request", "orders",
                      "order_by_rx", "download")
OPTIONAL_ENDPOINTS = ("return_to_doctor",)

# -- statuses -------------------------------------------------------------------------------------------
# Practice side (Completed, iTero Modeling, Lab Review, Scanning, iTero Milling) and lab side (Ready for
# Download, Lab Review, iTero Milling, Ready to Ship, Downloaded), docs/sources.md source 001. Keys are compared
# case-insensitively with runs of spaces collapsed; an unknown word is IN_PROGRESS, kept as it came.
STAGES = {
    "completed": OrderStage.READY,
    "ready for download": OrderStage.READY,
    "itero modeling": OrderStage.IN_PROGRESS,
    "itero modelling": OrderStage.IN_PROGRESS,
    "lab review": OrderStage.REVIEW,
    "scanning": OrderStage.RESCAN,
    "itero milling": OrderStage.MILLING,
    "ready to ship": OrderStage.READY_TO_SHIP,
    "downloaded": OrderStage.DOWNLOADED,
}
# What a scan's assets are to us, and which download ("ide" or "thumbnails") fetches them.
ASSET_KINDS = {"IDE": "scan", "IMAGE_GALLERY": "image", "VIEWER": "viewer"}
DOWNLOADS = {"IDE": "ide", "IMAGE_GALLERY": "thumbnails"}
JAWS = {"upper": Jaw.UPPER, "lower": Jaw.LOWER, "bite": Jaw.BITE}
FORMATS = frozenset({"STL", "PLY", "ZIP", "JPG", "PNG", "OBJ"})
FDI = re.compile(r"^(?:[1-4][1-8]|[5-8][1-5])$")
MAX_TEXT = 1000  # longer strings are cut, not refused


def stage_of(status: str) -> OrderStage:
    return STAGES.get(" ".join(status.split()).casefold(), OrderStage.IN_PROGRESS)


# -- requests we build ------------------------------------------------------------------------------

def url(base: str, path: str) -> str:
    return f"{base.rstrip('/')}/{path}"


def authorize_query(client_id: str, redirect_uri: str, state: str) -> dict:
    return {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": state}


def code_form(code: str, redirect_uri: str) -> dict:
    return {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}


def refresh_form(refresh_token: str) -> dict:
    return {"grant_type": "refresh_token", "refresh_token": refresh_token}


def revoke_form(token: str) -> dict:
    return {"token": token}


def pair_body(account_id: str, callback_url: str) -> dict:
    return {"account_id": account_id, "callback_url": callback_url}


def orders_query(updated_since: str, page: int) -> dict:
    query = {"page": str(page)}
    if updated_since:
        query["updated_since"] = updated_since
    return query


def cursor(moment: dt.datetime) -> str:
    """A naive UTC time as the ISO 8601 `updated_since` (milliseconds, Z)."""
    return moment.isoformat(timespec="milliseconds") + "Z"


def return_to_doctor_body(reason: str) -> dict:
    return {"reason": reason}


def _fill(template: str, **values: str) -> str:
    """An endpoint URL with its {placeholders} filled in; every value is quoted as one path segment,
    so an id from a callback can't step out of its place ("../", "?", "/")."""
    out = template
    for name, value in values.items():
        out = out.replace("{" + name + "}", quote(str(value), safe=""))
    return out


def order_by_rx_url(endpoints: dict, rx_id: str) -> str:
    return _fill(endpoints["order_by_rx"], rx_id=rx_id)


def download_url(endpoints: dict, order_id: str, asset: str) -> str:
    return _fill(endpoints["download"], order_id=order_id, asset=asset)


def delete_rx_url(endpoints: dict, rx_id: str) -> str:
    return f"{endpoints['scan_request'].rstrip('/')}/{quote(rx_id, safe='')}"


def return_to_doctor_url(endpoints: dict, order_id: str) -> str:
    template = endpoints.get("return_to_doctor")
    if not template:
        raise VendorError("iTero's discovery names no return-to-doctor endpoint; return the scan in the "
                          "MyiTero portal.", "refused")
    return _fill(template, order_id=order_id)


# Our restorations by the procedure names iTero's Rx form uses (our assumption).
PROCEDURES = {
    "crown": "Crown", "bridge": "Bridge", "inlay_onlay": "Inlay/Onlay", "veneer": "Veneer",
    "implant_crown": "Implant Crown", "implant_bridge": "Implant Bridge", "full_denture": "Denture",
    "partial_denture": "Partial Denture", "aligner": "Invisalign", "night_guard": "Night Guard",
    "retainer": "Retainer", "other": "Study Model",
}


def scan_request(case, doctor_id: str) -> dict:
    """The Scan Request body for a lab case: its patient, the iTero doctor, the procedure of its
    items (several joined with " + "), every tooth of the prescription (FDI), due date, instructions
    and lab."""
    patient = case.patient
    procedures, teeth = [], []
    for item in case.items:
        name = PROCEDURES.get(item.restoration, "Study Model")
        if name not in procedures:
            procedures.append(name)
        teeth += [t for t in item.tooth_list if t not in teeth]
    return {
        "patient": {"first_name": patient.first_name, "last_name": patient.last_name,
                    "chart_number": patient.chart_number or "",
                    "date_of_birth": patient.date_of_birth.isoformat() if patient.date_of_birth else None},
        "doctor_id": doctor_id,
        "procedure": " + ".join(procedures) or "Study Model",
        "teeth": teeth,
        "due_date": case.due_date.isoformat() if case.due_date else None,
        "notes": case.instructions or "",
        "lab_name": case.lab.name if case.lab else "",
    }


# -- answers we read ------------------------------------------------------------------------------------

def token_answer(data: dict) -> dict:
    """The token endpoint's (and pair's) answer as oauth.set_tokens wants it."""
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        raise VendorError("iTero's token answer holds no access_token.", "refused")
    refresh = data.get("refresh_token")
    expires = data.get("expires_in", 3600)
    try:
        expires = int(expires)
    except (TypeError, ValueError):
        expires = 3600
    return {"access_token": access, "refresh_token": refresh if isinstance(refresh, str) else "",
            "expires_in": expires}


def endpoints(data: dict) -> dict[str, str]:
    """Discovery's endpoint URLs by our names; VendorError when one we need is missing."""
    found = data.get("endpoints")
    if not isinstance(found, dict):
        raise VendorError("iTero's discovery answer holds no endpoints.", "refused")
    out = {}
    for name in REQUIRED_ENDPOINTS + OPTIONAL_ENDPOINTS:
        value = found.get(name)
        if isinstance(value, str) and value.strip():
            out[name] = value.strip()
        elif name in REQUIRED_ENDPOINTS:
            raise VendorError(f"iTero's discovery names no {name} endpoint.", "refused")
    return out


def region(data: dict) -> str:
    value = data.get("region")
    return value if isinstance(value, str) else ""


def accounts(data: dict) -> list[tuple[str, str]]:
    """(account id, "company name (region)") of Get Accounts for Pairing."""
    rows = data.get("accounts")
    if not isinstance(rows, list):
        raise VendorError("iTero's accounts answer holds no list of accounts.", "refused")
    out = []
    for row in rows:
        if not isinstance(row, dict) or _id(row.get("account_id")) == "":
            continue
        name = _str(row.get("company_name")) or f"Account {_id(row['account_id'])}"
        where = _str(row.get("region"))
        out.append((_id(row["account_id"]), f"{name} ({where})" if where else name))
    return out


@dataclass(frozen=True)
class PracticeConfiguration:
    doctors: tuple[tuple[str, str], ...]  # (doctor id, name)
    scanners: tuple[str, ...]  # serial numbers


def practice_configuration(data: dict) -> PracticeConfiguration:
    doctors, scanners = data.get("doctors"), data.get("scanners")
    if not isinstance(doctors, list) or not isinstance(scanners, list):
        raise VendorError("iTero's practice configuration holds no doctors or no scanners list.", "refused")
    return PracticeConfiguration(
        tuple((_id(d.get("doctor_id")), _str(d.get("name"))) for d in doctors
              if isinstance(d, dict) and _id(d.get("doctor_id"))),
        tuple(_str(s.get("serial")) for s in scanners if isinstance(s, dict)))


def rx_id(data: dict) -> str:
    value = _id(data.get("rx_id"))
    if not value:
        raise VendorError("iTero accepted the Rx but sent back no rx_id.", "refused")
    return value


def orders_page(data: dict) -> tuple[list, bool, int | None]:
    """(the raw orders of one page, whether there is another page, the page number the vendor
    says this is, or None when it does not say)."""
    orders = data.get("orders")
    if not isinstance(orders, list):
        raise VendorError("iTero's orders answer holds no list of orders.", "refused")
    more = data.get("has_more", False)
    page = data.get("page")
    return orders, more is True, page if isinstance(page, int) and not isinstance(page, bool) and page >= 0 else None


def callback(raw: bytes) -> tuple[str, str]:
    """(rx id, account number) of a scan notification; ValueError saying what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    if holds_nul(data):
        raise ValueError("the body holds a NUL character")
    rx, account = _id(data.get("rx_id")), _id(data.get("account_number"))
    if not rx:
        raise ValueError("rx_id is missing")
    if len(rx) > 100:
        raise ValueError("rx_id is longer than 100 characters")
    if not account:
        raise ValueError("account_number is missing")
    return rx, account


# -- ORDER -> VendorOrder -------------------------------------------------------------------------------

class _Bad(Exception):
    pass


def order_ref(raw) -> str:
    """The order id of a raw order as far as it can be read, for messages about it."""
    if isinstance(raw, dict):
        return _id(raw.get("order_id")) or _id(raw.get("rx_id"))
    return ""


def order_time(raw) -> dt.datetime | None:
    """The updated_at of a raw order when it can be read (for the cursor, even if the rest can't)."""
    if not isinstance(raw, dict):
        return None
    try:
        return _time(raw.get("updated_at"), "updated_at", required=True)
    except _Bad:
        return None


def order(raw, endpoints: dict | None = None) -> VendorOrder:
    """One ORDER as a VendorOrder. VendorError(kind "refused") names the order and what is wrong."""
    try:
        return _order(raw, endpoints or {})
    except _Bad as exc:
        ref = order_ref(raw)
        raise VendorError(f"iTero sent order {ref or 'without an order_id'} that can't be read: {exc}.",
                          "refused") from None


def _order(raw, endpoints: dict) -> VendorOrder:
    if not isinstance(raw, dict):
        raise _Bad(f"it is a {type(raw).__name__}, not an object")
    order_id = _id(raw.get("order_id"))
    if not order_id:
        raise _Bad("order_id is missing")
    status = raw.get("status")
    if not isinstance(status, str) or not status.strip():
        raise _Bad("status is missing")
    status = " ".join(status.split())
    updated_at = _time(raw.get("updated_at"), "updated_at", required=True)
    patient = raw.get("patient")
    if not isinstance(patient, dict):
        raise _Bad("patient is missing")
    # A birth date that is not a date is dropped (matching falls back to the chart number), not refused.
    ref = PatientRef(_str(patient.get("first_name")), _str(patient.get("last_name")),
                     _id(patient.get("chart_number")),
                     _date(patient.get("date_of_birth"), "patient.date_of_birth", lenient=True))
    doctor = raw.get("doctor") if isinstance(raw.get("doctor"), dict) else {}
    lab = raw.get("lab") if isinstance(raw.get("lab"), dict) else {}
    procedure = _str(raw.get("procedure"))
    teeth = _teeth(raw.get("teeth", []))
    history = _history(raw.get("history", []))
    assets = _assets(raw.get("assets", []), order_id, endpoints)
    return VendorOrder(
        vendor=Vendor.ITERO, order_id=order_id, status=status, stage=stage_of(status), patient=ref,
        updated_at=updated_at, rx_id=_id(raw.get("rx_id")), scanned_at=_scanned_at(history),
        doctor_name=_str(doctor.get("name")), doctor_ref=_id(doctor.get("doctor_id")), procedure=procedure,
        items=(_item(procedure, teeth),) if procedure or teeth else (),
        lab_ref=_id(lab.get("lab_id")), lab_name=_str(lab.get("name")),
        due_date=_date(raw.get("due_date"), "due_date", lenient=True), notes=_str(raw.get("notes")),
        assets=assets, history=history,
    )


def _item(procedure: str, teeth: tuple[str, ...]) -> RxItem:
    restoration = restoration_for(procedure)
    return RxItem(teeth, restoration, notes=procedure if restoration == "other" else "")


def _teeth(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad("teeth is not a list")
    teeth = []
    for tooth in value:
        text = str(tooth).strip() if isinstance(tooth, str | int) and not isinstance(tooth, bool) else ""
        if not FDI.match(text):
            raise _Bad(f"teeth holds {tooth!r}, which is not an FDI tooth number")
        teeth.append(text)
    return tuple(teeth)


def _history(value) -> tuple[tuple[str, dt.datetime | None], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad("history is not a list")
    out = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("status"), str):
            raise _Bad("history holds an entry without a status")
        out.append((" ".join(entry["status"].split()), _time(entry.get("at"), "history.at", required=False)))
    return tuple(out)


def _scanned_at(history) -> dt.datetime | None:
    """When the newest (re)scan was completed: the last history entry that is a ready scan."""
    times = [at for status, at in history if at is not None and stage_of(status) is OrderStage.READY]
    return times[-1] if times else None


def _assets(value, order_id: str, endpoints: dict) -> tuple[Asset, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad("assets is not a list")
    out, seen = [], set()
    for n, raw in enumerate(value, start=1):
        if not isinstance(raw, dict):
            raise _Bad(f"asset {n} is not an object")
        asset_id = _id(raw.get("asset_id"))
        if not asset_id:
            raise _Bad(f"asset {n} has no asset_id")
        if asset_id in seen:
            continue
        seen.add(asset_id)
        kind_word = _str(raw.get("kind")).upper()
        file_format = _str(raw.get("format")).upper()
        size = raw.get("size_bytes")
        download = DOWNLOADS.get(kind_word)
        jaw = JAWS.get(_str(raw.get("jaw")).lower(), Jaw.UNKNOWN)
        out.append(Asset(
            ref=asset_id,
            file_name=_str(raw.get("file_name")) or asset_id,
            format=file_format if file_format in FORMATS else (file_format[:10] or "?"),
            kind=ASSET_KINDS.get(kind_word, "other"),
            size_bytes=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
            jaw=jaw, jaw_source="vendor" if jaw is not Jaw.UNKNOWN else "",
            url=download_url(endpoints, order_id, download) if download and "download" in endpoints else "",
        ))
    return tuple(out)


def _str(value) -> str:
    return " ".join(value.split())[:MAX_TEXT] if isinstance(value, str) else ""


def _id(value) -> str:
    """An id the vendor may send as a string or a number."""
    if isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return str(value)
    return value.strip()[:100] if isinstance(value, str) else ""


def _time(value, name: str, *, required: bool) -> dt.datetime | None:
    if value in (None, "") and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"{name} is missing")
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise _Bad(f"{name} {value[:40]!r} is not an ISO 8601 time") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def _date(value, name: str, *, lenient: bool = False) -> dt.date | None:
    if value in (None, ""):
        return None
    try:
        if not isinstance(value, str):
            raise ValueError
        return dt.date.fromisoformat(value.strip()[:10])
    except ValueError:
        if lenient:
            return None
        raise _Bad(f"{name} {str(value)[:40]!r} is not a date (YYYY-MM-DD)") from None

