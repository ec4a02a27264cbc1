"""Medit Link's wire shapes (docs/vendors/medit.md), and what they mean as a VendorOrder.

Every Medit field name, path and header lives here; portal/integrations/medit/adapter.py only calls these.

What a Medit CASE becomes, and why:

- `order_id` is the case `uuid`: it stays the same while the clinic scans, processes, designs and
  rescans, so one Medit case is one scan in the inbox and at most one lab case.
- `stage`: Medit's case `status` is the clinic's own workflow (FORM, SCAN, NEED_PROCESSING, CAD,
  CAM, MILL, COMPLETED). Only COMPLETED means the clinic is done with the case; CAD, CAM and MILL
  are chairside design and milling at the clinic, not iTero's lab flow, so they are IN_PROGRESS
  like FORM, SCAN and NEED_PROCESSING (the vendor's word stays in `status` for people). A
  COMPLETED case is READY only once its scans can be fetched: at least one SCAN_DATA file has
  `uploadStatus` SUCCEED and none is still LOCAL_ONLY or STARTED (a scan still uploading is not
  a scan a lab can open). Until then it stays IN_PROGRESS; the upload finishing changes
  `dateUpdated` and the next poll or webhook makes it READY.
- files: only files with `uploadStatus` SUCCEED are referenced (the others can't be fetched yet;
  they appear once uploaded). SCAN_DATA files are the scans (kind "scan", format STL because we
  ask Medit for `type=stl`; Medit packs the mesh in a 7z archive). CAD_DATA is kind "cad",
  CAM_DATA and MILLING_DATA are "cam" (machining output), ATTACHED_DATA is "other": references
  only, no URL (the contract documents a download for meshes only).
- `ref` is the file `uuid`. `url` is the files endpoint `{resources}/v1/files/{uuid}?type=stl`,
  not the download link it answers with: that link expires after minutes and is different on every
  read, so storing it would make every poll look like a change (the content key would move) and
  hand labs dead links. The adapter resolves the download link when someone needs the file
  (`MeditAdapter.download_link`). Lab Manager keeps the reference, not the file (docs/sources.md source 000).
- jaw: from the scan file's name (`...-UpperJawScan...`, `...-LowerJawScan...`, `...-BiteScan...`,
  occlusion), by portal/scans/mesh/__init__.py's name detection.
- patient: Medit gives one `name`; `split_name` makes first and last name of it. The patient
  `code` is the chart number (the practice's match key); Medit sends no birth date, so a scan
  without a known chart number waits in the inbox for a person.
- `updated_at` is `dateUpdated`, `scanned_at` is `dateCreated` (when the clinic opened the case
  to scan it; Medit's files carry no time). Medit dates are epoch milliseconds (ISO text is read
  too).
"""
from __future__ import annotations

import datetime as dt
import re
from urllib.parse import quote

from portal.integrations.vendor import Asset, OrderStage, PatientRef, Vendor, VendorOrder
from portal.scans import mesh

LABEL = "Medit Link"

# Hosts are configuration (checked against SCANNER_ALLOWED_HOSTS); these are the defaults. Medit's
# stage hosts are the same names with a "stage-" prefix.
PRODUCTION_AUTH = "https://openapi-auth.meditlink.com"
PRODUCTION_RESOURCES = "https://openapi-resources.meditlink.com"
SCOPES = "USER GROUP CASE FILE ORDER offline_access"
OFFLINE_SCOPE = "offline_access"  # without it Medit gives no refresh token

# Auth host paths.
AUTHORIZE_PATH = "/oauth/authorize"
TOKEN_PATH = "/oauth/token"
# Resource host paths.
ME_PATH = "/v1/me"
SEARCH_PATH = "/v1/cases/search"
CASE_PATH = "/v1/cases/{uuid}"
FILE_PATH = "/v1/files/{uuid}"
PAGE_SIZE = 100  # the most Medit gives per page

# Headers.
CLIENT_HEADER = "x-meditlink-client-id"
GROUP_HEADER = "x-meditlink-group-uuid"
SIGNATURE_HEADER = "x-meditlink-signature"
EVENT_HEADER = "x-meditlink-event-code"

# Case statuses and file fields.
COMPLETED = "COMPLETED"  # the others: FORM, SCAN, NEED_PROCESSING, CAD, CAM, MILL
SCAN_DATA = "SCAN_DATA"
FILE_KINDS = {SCAN_DATA: "scan", "CAD_DATA": "cad", "CAM_DATA": "cam", "MILLING_DATA": "cam",
              "ATTACHED_DATA": "other"}
UPLOADED = "SUCCEED"
UPLOADING = frozenset({"LOCAL_ONLY", "STARTED"})  # not yet fetchable; FAILED is left out too
# Webhook bodies carry one of these; each names (or holds) the case to re-read.
WEBHOOK_PAYLOADS = ("case", "files", "order", "delivery", "patient")


# -- requests ----------------------------------------------------------------------------------------

def authorize_params(client_id: str, redirect_uri: str, scope: str, state: str) -> dict:
    return {"client_id": client_id, "response_type": "code", "redirect_uri": redirect_uri, "scope": scope,
            "state": state}


def code_form(code: str, redirect_uri: str) -> dict:
    return {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}


def refresh_form(refresh_token: str) -> dict:
    return {"grant_type": "refresh_token", "refresh_token": refresh_token}


def headers(client_id: str, group_uuid: str | None = None) -> dict:
    """The Medit headers of a resource call (the bearer token is added by portal/integrations/http.py)."""
    out = {CLIENT_HEADER: client_id, "Accept": "application/json"}
    if group_uuid:
        out[GROUP_HEADER] = group_uuid
    return out


def search_params(start_ms: int, end_ms: int, page: int, size: int = PAGE_SIZE) -> dict:
    return {"schema": "latest", "size": size, "page": page, "start": start_ms, "end": end_ms}


def case_path(case_uuid: str) -> str:
    return CASE_PATH.format(uuid=quote(case_uuid, safe=""))


def file_path(file_uuid: str) -> str:
    return FILE_PATH.format(uuid=quote(file_uuid, safe=""))


def file_url(resource_host: str, file_uuid: str) -> str:
    """The reference Lab Manager keeps for a mesh: the files endpoint, which answers a fresh download link."""
    return f"{resource_host.rstrip('/')}{file_path(file_uuid)}?type=stl"


FILE_PARAMS = {"type": "stl"}


# -- answers -----------------------------------------------------------------------------------------

def me(body: dict) -> dict:
    """/v1/me as {user, email, group_uuid, group_name}; group_uuid is "" when the user has no group."""
    group = body.get("group") if isinstance(body.get("group"), dict) else {}
    return {"user": _text(body.get("name")), "email": _text(body.get("email")),
            "group_uuid": _text(group.get("uuid")), "group_name": _text(group.get("name"))}


def search_page(body: dict) -> tuple[list[dict], int, int | None]:
    """(the cases of a search page, totalPages, totalElements or None when not given)."""
    content = body.get("content")
    cases = [c for c in content if isinstance(c, dict)] if isinstance(content, list) else []
    total_pages = _int(body.get("totalPages"))
    total = body.get("totalElements")
    return cases, total_pages if total_pages is not None else 0, _int(total)


def download(body: dict) -> tuple[str, str]:
    """(the download URL, the file name it downloads as) from /v1/files/{uuid}?type=stl."""
    return _text(body.get("url")), _text(body.get("downloadFileName"))


def case_uuid(case: dict) -> str:
    return _text(case.get("uuid"))


def case_to_order(case: dict, resource_host: str) -> VendorOrder:
    """One Medit CASE as a VendorOrder (the module's docstring says what maps to what, and why)."""
    uuid = case_uuid(case)
    if not uuid:
        raise ValueError("a Medit case without a uuid")
    status = _text(case.get("status")).upper()
    files = [f for f in case.get("files") or [] if isinstance(f, dict)]
    updated_at = parse_time(case.get("dateUpdated"))
    patient = case.get("patient") if isinstance(case.get("patient"), dict) else {}
    first, last = split_name(_text(patient.get("name")))
    waiting = sum(1 for f in files if _file_type(f) == SCAN_DATA and _upload(f) in UPLOADING)
    return VendorOrder(
        vendor=Vendor.MEDIT, order_id=uuid, status=status, stage=stage_for(status, files),
        patient=PatientRef(first_name=first, last_name=last, chart_number=_text(patient.get("code"))),
        updated_at=updated_at, scanned_at=parse_time(case.get("dateCreated")),
        assets=assets(files, resource_host), history=((status, updated_at),),
        extra={"case_name": _text(case.get("name")), "patient_uuid": _text(patient.get("uuid")),
               "scan_files_uploading": waiting},
    )


def stage_for(status: str, files: list[dict]) -> OrderStage:
    """READY for a COMPLETED case whose scans are all uploaded (at least one); else IN_PROGRESS."""
    if status != COMPLETED:
        return OrderStage.IN_PROGRESS
    scans = [_upload(f) for f in files if _file_type(f) == SCAN_DATA]
    if UPLOADED in scans and not any(s in UPLOADING for s in scans):
        return OrderStage.READY
    return OrderStage.IN_PROGRESS


def assets(files: list[dict], resource_host: str) -> tuple[Asset, ...]:
    """References to the uploaded files: scans first (with their jaw), then the others."""
    uploaded = [f for f in files if _upload(f) == UPLOADED and _text(f.get("uuid"))]
    scans = [f for f in uploaded if _file_type(f) == SCAN_DATA]
    others = [f for f in uploaded if _file_type(f) != SCAN_DATA]
    jaws = mesh.detect_jaws([(_text(f.get("name")), None, None) for f in scans])
    out = [Asset(ref=_text(f["uuid"]), file_name=_text(f.get("name")) or _text(f["uuid"]), format="STL",
                 kind="scan", jaw=jaw, jaw_source=source, url=file_url(resource_host, _text(f["uuid"])))
           for f, (jaw, source) in zip(scans, jaws, strict=True)]
    out += [Asset(ref=_text(f["uuid"]), file_name=_text(f.get("name")) or _text(f["uuid"]),
                  format=_extension(_text(f.get("name"))), kind=FILE_KINDS.get(_file_type(f), "other"))
            for f in others]
    return tuple(out)


def webhook_case_uuids(body: dict) -> list[str]:
    """The cases a webhook body names, in order, each once: `case.uuid`, the `caseUuid` of each of
    `files`, and the case of an `order` or a `delivery`. A `patient` event names no case."""
    found: list[str] = []

    def add(value) -> None:
        text = _text(value)
        if text and text not in found:
            found.append(text)

    case = body.get("case")
    if isinstance(case, dict):
        add(case.get("uuid"))
    files = body.get("files")
    for f in files if isinstance(files, list) else [files]:
        if isinstance(f, dict):
            add(f.get("caseUuid"))
    for key in ("order", "delivery"):
        item = body.get(key)
        if isinstance(item, dict):
            add(item.get("caseUuid"))
            if isinstance(item.get("case"), dict):
                add(item["case"].get("uuid"))
    return found


def webhook_kind(body: dict, event_code: str) -> str:
    """The event code header (`case.updated`...), else the body's payload key."""
    if event_code.strip():
        return event_code.strip()[:40]
    return next((key for key in WEBHOOK_PAYLOADS if key in body), "webhook")


# -- names and times ---------------------------------------------------------------------------------

# Lower-case words that begin a surname ("da Silva", "van der Berg", "de la Cruz").
_PARTICLES = frozenset({"da", "das", "de", "del", "della", "der", "di", "do", "dos", "du", "la", "le", "van",
                        "von", "den", "ten", "ter", "zu", "bin", "al"})
_SUFFIXES = frozenset({"jr", "jr.", "sr", "sr.", "ii", "iii", "iv"})


def split_name(name: str) -> tuple[str, str]:
    """(first, last) from Medit's one `name`.

    "Last, First" (a comma) is read as written. Otherwise the last word is the last name, with the
    lower-case particles before it ("Ana da Silva" -> "Ana", "da Silva") and a generational suffix
    after it ("John Smith Jr." -> "John", "Smith Jr."); everything before is the first name. One
    word, or a name in a script without spaces, is kept whole as the last name (a person can
    correct it; matching goes by chart number).
    """
    text = " ".join(name.split())
    if not text:
        return "", ""
    if "," in text:
        last, _, first = text.partition(",")
        return " ".join(first.split()), " ".join(last.split())
    words = text.split(" ")
    if len(words) == 1:
        return "", words[0]
    end = len(words) - 1
    if words[end].lower() in _SUFFIXES and end >= 2:
        end -= 1
    start = end
    while start > 1 and words[start - 1] in _PARTICLES:  # keep at least one word of first name
        start -= 1
    return " ".join(words[:start]), " ".join(words[start:])


def parse_time(value) -> dt.datetime | None:
    """Epoch milliseconds (a number, or digits) or ISO 8601 as naive UTC; None when absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float) or (isinstance(value, str) and value.strip().isdigit()):
        try:
            return dt.datetime.fromtimestamp(int(value) / 1000, dt.UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment
    return None


def epoch_ms(moment: dt.datetime) -> int:
    """A naive UTC datetime as epoch milliseconds (Medit's search window)."""
    return int(moment.replace(tzinfo=dt.UTC).timestamp() * 1000)


def _file_type(f: dict) -> str:
    return _text(f.get("fileType")).upper()


def _upload(f: dict) -> str:
    return _text(f.get("uploadStatus")).upper()


def _extension(name: str) -> str:
    match = re.search(r"\.([A-Za-z0-9]{1,10})$", name)
    return match.group(1).upper() if match else "FILE"


def _text(value) -> str:
    return value.strip() if isinstance(value, str) else ("" if value is None or isinstance(value, bool | dict | list)
                                                           else str(value))


def _int(value) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
