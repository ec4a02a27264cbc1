"""The scan inbox: where every vendor's scans land, are matched to a patient, and join a case.

`ingest` takes one :class:`VendorOrder` (from a poll, a callback, a webhook, an export or an upload)
and makes the database agree with it, in the caller's transaction:

1. The scan is keyed by (practice, vendor, order id). The same order reported again with the same
   content changes nothing; a report older than the one already applied changes nothing (docs/reliability.md W4, W6).
2. The scan's fields and file references follow the report. Files that are no longer reported (a
   rescan brought new ones) stay in the history with `replaced_at` set.
3. The patient is matched by chart number, else by name and date of birth; otherwise the scan
   waits in the inbox for a person.
4. A matched scan joins a case: the case its Rx was sent from, the case that already carries its
   order id, or the patient's one open draft (or case returned for rescan); else it creates a draft
   case from the scanner's prescription. No flow creates a second case for one order.
5. What the vendor's status means for the case: sent back for a rescan moves the case to "Returned
   for rescan"; a new scan for a case returned for rescan brings it back to Draft, to be checked and
   sent again; modelling, milling and shipping are timeline entries. Every change is audited.

Services flush; the request or job commits.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from dataclasses import dataclass

from sqlalchemy import bindparam, exists, func, or_, select

from portal.audit.actor import Actor
from portal.audit.record import record
from portal.cases import catalog, lifecycle
from portal.cases.lifecycle import IllegalMove, Status
from portal.cases.models import LabCase
from portal.cases.services import CaseData, ItemData, create_case
from portal.extensions import db
from portal.integrations.itero.models import RxState, ScanRequest
from portal.integrations.models import ScannerIntegration
from portal.integrations.vendor import Asset, Jaw, OrderStage, PatientRef, Vendor, VendorOrder
from portal.labs.models import Lab
from portal.people.models import Appointment, AppointmentKind, Patient, Provider
from portal.practices.models import Practice, utcnow
from portal.scans.lookups import Lookups
from portal.scans.models import FileState, InboxState, Scan, ScanFile

MESH_FORMATS = frozenset({"STL", "PLY", "OBJ"})
# Cases a new scan of the patient may join without being told which: a draft waiting for its scan,
# or a case the lab returned for a rescan.
JOINABLE = frozenset({Status.DRAFT, Status.RESCAN})
# The vendor's word for what a practice calls the restoration, in the order they are tried.
PROCEDURES = (
    ("implant bridge", "implant_bridge"), ("implant", "implant_crown"), ("bridge", "bridge"),
    ("crown", "crown"), ("inlay", "inlay_onlay"), ("onlay", "inlay_onlay"), ("veneer", "veneer"),
    ("partial", "partial_denture"), ("denture", "full_denture"), ("invisalign", "aligner"),
    ("aligner", "aligner"), ("night guard", "night_guard"), ("nightguard", "night_guard"),
    ("splint", "night_guard"), ("retainer", "retainer"),
)


class ScanError(ValueError):
    """A request about a scan that can't be done; str(exc) is for the person who asked."""


SOURCE_PERSON = "person"  # ScanFile.jaw_source of a jaw a person set on the scan page


@dataclass(frozen=True)
class Comparison:
    """One line of "the scanner says / the patient's record says", for the person to compare."""

    label: str  # "Name", "Birth date", "Chart number"
    scanner: str
    record: str
    differs: bool


class NeedsConfirmation(ScanError):
    """A person matched a scan to a patient whose name or birth date is not the scanner's: nothing
    was changed; they must see both side by side and confirm (then it is audited as an override).
    `target` is the patient or the case they chose."""

    def __init__(self, scan: Scan, patient: Patient, lines: list[Comparison], target=None):
        differs = [line.label.lower() for line in lines if line.differs]
        name, born = lines[0], lines[1]
        super().__init__(f"The scanner's patient is {name.scanner}, born {born.scanner}; the record is "
                         f"{name.record}, born {born.record}: the {' and '.join(differs)} "
                         f"{'differs' if len(differs) == 1 else 'differ'}. Check it is the same person, "
                         "then confirm.")
        self.scan, self.patient, self.lines, self.target = scan, patient, lines, target or patient

    @property
    def differs(self) -> list[str]:
        return [line.label.lower() for line in self.lines if line.differs]




@dataclass
class Ingested:
    scan: Scan
    outcome: str  # new, updated, unchanged, stale
    case_action: str = ""  # created, joined, or "" when the case was already known or none was chosen


# -- reading ---------------------------------------------------------------------------------------

def find_scan(practice_id: int, vendor: Vendor, order_id: str) -> Scan | None:
    return db.session.scalar(select(Scan).where(
        Scan.practice_id == practice_id, Scan.vendor == vendor, Scan.order_id == order_id))


def scans_of_case(case_id: int) -> list[Scan]:
    return list(db.session.scalars(select(Scan).where(Scan.case_id == case_id).order_by(Scan.received_at)))


def inbox_counts(practice_id: int) -> dict[InboxState, int]:
    rows = db.session.execute(select(Scan.inbox, func.count()).where(Scan.practice_id == practice_id)
                              .group_by(Scan.inbox))
    return {state: count for state, count in rows}


# -- ingest ------------------------------------------------------------------------------------------

def ingest(practice_id: int, order: VendorOrder, *, actor: Actor, source: str,
           integration: ScannerIntegration | None = None, lookups: Lookups | None = None,
           absent: bool = False) -> Ingested:
    """Make the inbox and the case agree with one report of one order (see the module's docstring).
    A sync passes its `lookups` (portal/scans/lookups.py: its integration is then `integration`)
    and says the order is `absent` when it has just looked for its scan and found none."""
    key = order.content_key()
    scan = None if absent else find_scan(practice_id, order.vendor, order.order_id)
    if scan is not None:
        if scan.content_key == key:
            return Ingested(scan, "unchanged")
        if _older(order, scan):
            return Ingested(scan, "stale")
    new = scan is None
    if new:
        scan = Scan(practice_id=practice_id, vendor=order.vendor, order_id=order.order_id,
                    integration_id=integration.id if integration else None, received_at=utcnow(),
                    stage=order.stage)
        db.session.add(scan)
    before = None if new else _summary(scan)
    previous_stage = None if new else scan.stage
    _copy_report(scan, order, key, source)
    # A new scan's patient is looked up before its row is written, so the row is inserted with it
    # (not updated after); the match is audited after the scan.received row all the same.
    matched = new and _find_patient(scan)
    files_changed = _apply_files(scan, order.assets)  # flushed: the scan and its files have ids
    record("scan.received" if new else "scan.updated", "scan", scan.id, before=before, after=_summary(scan),
           actor=actor, practice_id=practice_id)
    case_action = ""
    if scan.inbox is not InboxState.DISMISSED:
        # Matching and placing read patients, requests, cases and appointments, none of which
        # depend on the scan's pending changes: those go out with the next flush in one UPDATE, not
        # one before each of these reads.
        with db.session.no_autoflush:
            if not new and scan.patient_id is None:
                matched = _find_patient(scan)
            if matched:
                _audit_match(scan, actor)
            if scan.case_id is None and scan.patient_id is not None and not still_scanning(scan):
                case_action = _place(scan, integration, actor, lookups)
        if scan.case_id is not None:
            _follow_stage(scan, previous_stage, files_changed, actor)
        _settle(scan)
    # Last, so that creating a case (which flushes for its id) does not write them too: they go out
    # with the scan's own changes when the order is committed.
    _link_bites(scan)
    return Ingested(scan, "new" if new else "updated", case_action)


def mark_deleted(practice_id: int, vendor: Vendor, order_id: str, *, actor: Actor) -> Scan | None:
    """The vendor deleted the order: the scan's stage says so (its fields and file references stay
    as last reported, for the history). The case is not cancelled by it. None when there is no
    such scan or it is marked already."""
    scan = find_scan(practice_id, vendor, order_id)
    if scan is None or scan.stage is OrderStage.DELETED:
        return None
    before = _summary(scan)
    scan.stage, scan.updated_at = OrderStage.DELETED, utcnow()
    scan.content_key = ""  # should the vendor report it again (restored), that report is applied
    db.session.flush()
    record("scan.deleted_at_vendor", "scan", scan.id, before=before, after=_summary(scan), actor=actor,
           practice_id=practice_id)
    return scan


def _older(order: VendorOrder, scan: Scan) -> bool:
    return (order.updated_at is not None and scan.vendor_updated_at is not None
            and naive_utc(order.updated_at) < naive_utc(scan.vendor_updated_at))


def naive_utc(moment: dt.datetime | None) -> dt.datetime | None:
    """A vendor's time as the database keeps times: UTC without a zone (a 3Shape export's times
    carry UTC; an aware and a naive time can't be compared)."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _summary(scan: Scan) -> dict:
    return {"vendor": scan.vendor.value, "order_id": scan.order_id, "status": scan.status,
            "stage": scan.stage.value, "files": sorted(f.file_name for f in scan.current_files),
            "patient": scan.patient_label, "source": scan.source}


def _copy_report(scan: Scan, order: VendorOrder, key: str, source: str) -> None:
    """Copy the report's fields onto the scan (its files: _apply_files)."""
    scan.content_key, scan.source = key, source
    scan.status, scan.stage = order.status[:60], order.stage
    scan.vendor_updated_at = naive_utc(order.updated_at)
    scan.rx_id = order.rx_id or scan.rx_id
    scan.scanned_at = naive_utc(order.scanned_at) or scan.scanned_at
    p = order.patient
    scan.patient_first_name, scan.patient_last_name = p.first_name[:100], p.last_name[:100]
    scan.patient_chart_number, scan.patient_dob = p.chart_number[:40], p.date_of_birth
    scan.doctor_name, scan.procedure = order.doctor_name[:200], order.procedure[:100]
    scan.items = json.dumps([{"teeth": list(i.teeth), "restoration": i.restoration, "material": i.material,
                              "shade": i.shade, "notes": i.notes} for i in order.items])
    scan.notes = order.notes
    scan.lab_name, scan.lab_ref = order.lab_name[:200], order.lab_ref[:100]
    scan.due_date = order.due_date
    scan.history = json.dumps([{"status": s, "at": at.isoformat() if at else None} for s, at in order.history])
    scan.updated_at = utcnow()


def _apply_files(scan: Scan, assets: tuple[Asset, ...]) -> bool:
    """The report's files onto the scan, flushed (the new ones have ids; the caller links bites);
    returns whether the set of current files changed."""
    current = {f.ref: f for f in scan.files if f.replaced_at is None}
    wanted = {a.ref: a for a in assets}
    now = utcnow()
    changed = False
    for ref, row in current.items():
        if ref not in wanted:
            row.replaced_at, changed = now, True
    for ref, asset in wanted.items():
        row = current.get(ref)
        if row is None:
            row = ScanFile(ref=ref[:300])
            scan.files.append(row)
            changed = True
        _copy_asset(row, asset)
    db.session.flush()  # the new files' ids, for their bites' links (the caller links them)
    return changed


def _copy_asset(row: ScanFile, asset: Asset) -> None:
    row.file_name, row.format, row.kind = asset.file_name[:255], asset.format.upper()[:10], asset.kind[:20]
    row.size_bytes, row.url = asset.size_bytes, asset.url[:1000]
    if row.jaw_source != SOURCE_PERSON:  # a jaw a person set stays until a person changes it
        row.jaw, row.jaw_source, row.jaw_note = asset.jaw, asset.jaw_source[:20], asset.jaw_note[:200]
    if row.state is FileState.PROCESSING and not (asset.error or asset.triangle_count is not None):
        return  # a job is reading it; it writes the outcome
    row.vertex_count, row.triangle_count, row.error = asset.vertex_count, asset.triangle_count, asset.error[:300]
    if asset.error:
        row.state = FileState.REFUSED
    elif asset.triangle_count is not None:
        row.state = FileState.OK
    else:
        row.state = FileState.REFERENCE


def _link_bites(scan: Scan) -> None:
    """A bite scan belongs to both arches (docs/sources.md source 002): point it at the scan's upper and lower file."""
    files = scan.current_files

    def arch(jaw: Jaw) -> ScanFile | None:
        # The first of the arch's files, a mesh that was read (or is being read) before a reference
        # to the same scan (a 3Shape export holds the preparation scan as .stl and as .dcm).
        found = [f for f in files if f.jaw is jaw and f.state is not FileState.REFUSED]
        rank = {FileState.OK: 0, FileState.PROCESSING: 1}
        return min(found, key=lambda f: rank.get(f.state, 2), default=None)

    upper, lower = arch(Jaw.UPPER), arch(Jaw.LOWER)
    for f in files:
        if f.jaw is Jaw.BITE:
            f.upper_file_id = upper.id if upper else None
            f.lower_file_id = lower.id if lower else None


# -- the patient ------------------------------------------------------------------------------------

def _match_patient(scan: Scan, actor: Actor) -> None:
    if _find_patient(scan):
        _audit_match(scan, actor)


def _find_patient(scan: Scan) -> bool:
    """Put the scan on the practice's patient it is, if one matches for sure (the caller audits it:
    _audit_match). Reading does not flush the scan's pending changes (a new scan is inserted with
    its patient)."""
    with db.session.no_autoflush:
        patient, how = match_patient(scan.practice_id, scanner_ref(scan))
    if patient is None:
        return False
    scan.patient_id, scan.matched_by = patient.id, how
    scan.patient = patient  # held, so creating the case finds it in the session instead of loading it again
    return True


def _audit_match(scan: Scan, actor: Actor) -> None:
    patient = scan.patient
    record("scan.matched", "scan", scan.id, after={"patient_id": patient.id, "by": scan.matched_by,
           "patient": patient.full_name}, actor=actor, practice_id=scan.practice_id)


# The statements every ingested order runs, built once: building and keying them for each order
# cost about as much as running them (as portal/audit/record.py found for its own).
_BY_CHART = select(Patient).where(Patient.practice_id == bindparam("practice_id"),
                                  func.lower(Patient.chart_number) == bindparam("chart"))
_RX_REQUEST = select(ScanRequest).where(ScanRequest.integration_id == bindparam("integration_id"),
                                        ScanRequest.rx_id == bindparam("rx_id"))
_CASE_WITH_ORDER = select(LabCase).where(
    LabCase.practice_id == bindparam("practice_id"), LabCase.origin == bindparam("origin"),
    LabCase.origin_order_id == bindparam("order_id"), LabCase.status != Status.CANCELLED,
).order_by(LabCase.id.desc()).limit(1)
# The patient's cases a new scan may join by itself: one returned for a rescan, or a draft with no
# scan yet that waits for no particular order (a draft entered with another scanner's, or another
# order's, id waits for that one: _case_with_order finds it).
_OPEN_CASES_WITHOUT_SCAN = select(LabCase).where(
    LabCase.practice_id == bindparam("practice_id"), LabCase.patient_id == bindparam("patient_id"),
    or_(LabCase.status == Status.RESCAN,
        (LabCase.status == Status.DRAFT) & ~exists().where(Scan.case_id == LabCase.id)
        & ((LabCase.origin == "manual") | (func.coalesce(LabCase.origin_order_id, "") == ""))),
).order_by(LabCase.id)
_OTHER_SCANS = select(func.count()).select_from(Scan).where(Scan.case_id == bindparam("case_id"),
                                                            Scan.id != bindparam("scan_id"))
_NEXT_SEAT = select(Appointment).where(
    Appointment.practice_id == bindparam("practice_id"), Appointment.patient_id == bindparam("patient_id"),
    Appointment.kind == AppointmentKind.SEAT, Appointment.starts_at >= bindparam("now"),
    Appointment.not_happening == "",
).order_by(Appointment.starts_at).limit(1)


def match_patient(practice_id: int, ref: PatientRef) -> tuple[Patient | None, str]:
    """The practice's patient this is: by chart number, else by name and date of birth when exactly
    one patient has them. (None, "") when nothing matches for sure."""
    chart = ref.chart_number.strip()
    if chart:
        patient = db.session.scalar(_BY_CHART, {"practice_id": practice_id, "chart": chart.lower()})
        if patient is not None:
            return patient, "chart"
    found = same_name_and_birth(practice_id, ref)
    if len(found) == 1:
        return found[0], "name_dob"
    return None, ""


def same_name_and_birth(practice_id: int, ref: PatientRef, limit: int = 5) -> list[Patient]:
    """The practice's patients with the scanner's first name, last name and birth date (one is a
    match; two or more are for a person to choose from)."""
    first, last = _name(ref.first_name), _name(ref.last_name)
    if not (first and last and ref.date_of_birth):
        return []
    found = db.session.scalars(select(Patient).where(
        Patient.practice_id == practice_id, Patient.date_of_birth == ref.date_of_birth,
        func.lower(Patient.last_name) == last).order_by(Patient.id).limit(limit))
    return [p for p in found if _name(p.first_name) == first]


def scanner_ref(scan: Scan) -> PatientRef:
    return PatientRef(scan.patient_first_name, scan.patient_last_name, scan.patient_chart_number, scan.patient_dob)


def _name(text: str) -> str:
    return " ".join(text.split()).lower()


def _name_words(*parts: str) -> frozenset[str]:
    """The words of a name, compared without case, accents or punctuation, in any order: "Park,
    Henry", "Henry Park" and "HENRY  PARK" are one name (3Shape often puts the whole name in the
    last name); "Okafor-Smith" is not "Okafor"."""
    text = unicodedata.normalize("NFKD", " ".join(parts))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return frozenset(w for w in re.split(r"[^\w]+", text) if w)


def _date_text(day: dt.date | None) -> str:
    return day.strftime("%d %b %Y") if day else "not given"


def compare_patient(scan: Scan, patient: Patient) -> list[Comparison]:
    """The scanner's patient beside the patient's record. Name and birth date differ when the
    scanner gave them and they are not the record's; a birth date missing on either side is shown,
    not counted (Medit sends none). The chart number is shown for the person, not counted (a
    scanner's chart field is often the scanner's own id)."""
    scanner_words = _name_words(scan.patient_first_name, scan.patient_last_name)
    record_words = _name_words(patient.first_name, patient.last_name)
    scanner_dob, record_dob = scan.patient_dob, patient.date_of_birth
    return [
        Comparison("Name", scan.patient_label if scanner_words else "not given", patient.full_name,
                   bool(scanner_words) and scanner_words != record_words),
        Comparison("Birth date", _date_text(scanner_dob), _date_text(record_dob),
                   scanner_dob is not None and record_dob is not None and scanner_dob != record_dob),
        Comparison("Chart number", scan.patient_chart_number or "not given", patient.chart_number or "none",
                   False),
    ]


def _check_same_person(scan: Scan, patient: Patient, confirmed: bool, target=None) -> list[Comparison]:
    """The comparison when a person matches `scan` to `patient`; NeedsConfirmation when the name or
    the birth date differs and they have not confirmed yet."""
    lines = compare_patient(scan, patient)
    if any(line.differs for line in lines) and not confirmed:
        raise NeedsConfirmation(scan, patient, lines, target)
    return lines


def _record_match(scan: Scan, patient: Patient, before: dict, lines: list[Comparison], actor: Actor) -> None:
    """The audit row of a person's match: "scan.match_override" when the scanner's name or birth
    date differed and they confirmed it anyway, with both sides as they saw them."""
    differs = [line.label.lower() for line in lines if line.differs]
    after = {"patient_id": patient.id, "by": "person", "patient": patient.full_name}
    if differs:
        after.update(override=True, differs=differs,
                     scanner={line.label.lower(): line.scanner for line in lines},
                     record={line.label.lower(): line.record for line in lines})
    record("scan.match_override" if differs else "scan.matched", "scan", scan.id, before=before, after=after,
           actor=actor, practice_id=scan.practice_id, outcome="override" if differs else "ok")


# -- the case ---------------------------------------------------------------------------------------

def _place(scan: Scan, integration: ScannerIntegration | None, actor: Actor,
           lookups: Lookups | None = None) -> str:
    """Join the scan to its case, or create one; or leave it for a person with the reason."""
    case = _case_of_rx(scan) or _case_with_order(scan)
    if case is None:
        candidates = _open_cases_without_scan(scan)
        if len(candidates) > 1:
            scan.problem = (f"{len(candidates)} open cases of this patient wait for a scan "
                            f"({', '.join(c.number for c in candidates)}); choose one.")
            return ""
        case = candidates[0] if candidates else None
    if case is not None:
        link(scan, case, actor)
        return "joined"
    case, problem = _new_case(scan, integration, actor, lookups)
    link(scan, case, actor, created=True)
    scan.problem = problem  # a note for the case (the lab to choose), once the scan is on it
    return "created"


def _case_of_rx(scan: Scan) -> LabCase | None:
    if not scan.rx_id or scan.integration_id is None:
        return None
    request = db.session.scalar(_RX_REQUEST, {"integration_id": scan.integration_id, "rx_id": scan.rx_id})
    if request is None:
        return None
    request.state = RxState.SCANNED
    return request.case if request.case.status is not Status.CANCELLED else None


def _case_with_order(scan: Scan) -> LabCase | None:
    return db.session.scalar(_CASE_WITH_ORDER, {"practice_id": scan.practice_id, "origin": _origin(scan.vendor),
                                                "order_id": scan.order_id})


def _open_cases_without_scan(scan: Scan) -> list[LabCase]:
    """The patient's cases a new scan may join by itself (_OPEN_CASES_WITHOUT_SCAN says which)."""
    return list(db.session.scalars(_OPEN_CASES_WITHOUT_SCAN, {"practice_id": scan.practice_id,
                                                              "patient_id": scan.patient_id}))


def _origin(vendor: Vendor) -> str:
    return vendor.value  # the case's origin uses the vendor's value (catalog.ORIGINS)


def link(scan: Scan, case: LabCase, actor: Actor, created: bool = False) -> None:
    """Put the scan on `case`. The case's origin agrees with its scans: a case with no other scan
    (entered by hand, or with another scanner or order id typed in) takes this scan's vendor and
    order id; a case that has scans keeps the origin of its first."""
    if case.practice_id != scan.practice_id:
        raise ScanError("That case belongs to another practice.")
    if case.status is Status.CANCELLED:
        raise ScanError(f"{case.number} is cancelled; a scan can't join it.")
    if scan.patient_id is not None and case.patient_id != scan.patient_id:
        raise ScanError(f"{case.number} is a case of another patient.")
    before = {"origin": case.origin, "origin_order_id": case.origin_order_id}
    scan.case_id, scan.patient_id = case.id, case.patient_id
    scan.matched_by = scan.matched_by or "person"
    scan.problem = ""
    # A case just created for this scan has no other scan to count.
    others = 0 if created else db.session.scalar(_OTHER_SCANS, {"case_id": case.id, "scan_id": scan.id})
    origin = (_origin(scan.vendor), scan.order_id)
    if (case.origin == "manual" or not case.origin_order_id or not others) and (
            case.origin, case.origin_order_id) != origin:  # unchanged: the case need not be flushed again
        case.origin, case.origin_order_id = origin
    after = {"origin": case.origin, "origin_order_id": case.origin_order_id, "scan_id": scan.id,
             "vendor": scan.vendor.value, "order_id": scan.order_id, "created_from_scan": created}
    record("case.scan_linked", "lab_case", case.id, before=before, after=after, actor=actor,
           practice_id=case.practice_id)
    _settle(scan)


def _new_case(scan: Scan, integration: ScannerIntegration | None, actor: Actor,
              lookups: Lookups | None = None) -> tuple[LabCase, str]:
    practice = lookups.practice if lookups else db.session.get(Practice, scan.practice_id)
    lab, problem = resolve_lab(integration, scan.lab_ref, scan.lab_name)
    seat = _seat_appointment(scan)  # held until the case is made: its checks and risk find it in the session
    data = CaseData(
        patient_id=scan.patient_id, provider_id=_provider_id(scan.practice_id, scan.doctor_name,
                                                                  lookups.providers if lookups else None),
        lab_id=lab.id if lab else None, items=_items(scan), seat_appointment_id=seat.id if seat else None,
        due_date=scan.due_date, instructions=scan.notes, origin=_origin(scan.vendor),
        origin_order_id=scan.order_id,
    )
    return create_case(practice, data, actor, lab=lab), problem


def resolve_lab(integration: ScannerIntegration | None, lab_ref: str, lab_name: str) -> tuple[Lab | None, str]:
    """The lab a scan's case goes to: the allowed lab the vendor names, else the integration's only
    allowed lab; (None, why) when it is not clear."""
    if integration is None:
        return None, ""
    allowed = [lab for lab in integration.labs if lab.active]
    wanted = _name(lab_name)
    if wanted:
        named = [lab for lab in allowed if _name(lab.name) == wanted]
        if named:
            return named[0], ""
        if len(allowed) != 1:
            return None, (f"{integration.vendor.label} names the lab “{lab_name}”, which is not one this "
                          "scanner may send to; choose the lab on the case.")
    if len(allowed) == 1:
        return allowed[0], ""
    return None, ""


def _provider_id(practice_id: int, doctor_name: str, providers: list[tuple[int, str]] | None = None) -> int | None:
    """The practice's one active provider the scanner's doctor name is, else None. `providers`:
    their (id, name) when the caller has them (a sync's Lookups), else they are read here."""
    wanted = _name(re.sub(r"^\s*dr\.?\s+", "", doctor_name, flags=re.IGNORECASE))
    if not wanted:
        return None
    if providers is None:
        providers = list(db.session.execute(select(Provider.id, Provider.name).where(
            Provider.practice_id == practice_id, Provider.active.is_(True))).tuples())
    found = [pid for pid, name in providers
             if _name(re.sub(r"^\s*dr\.?\s+", "", name, flags=re.IGNORECASE)) == wanted]
    return found[0] if len(found) == 1 else None


def _seat_appointment(scan: Scan) -> Appointment | None:
    """The patient's next seat appointment, the one this work is for when there is one."""
    return db.session.scalar(_NEXT_SEAT, {"practice_id": scan.practice_id, "patient_id": scan.patient_id,
                                          "now": utcnow()})


def _items(scan: Scan) -> list[ItemData]:
    items = [ItemData(teeth=list(i["teeth"]), restoration=i["restoration"] if i["restoration"] in
                      catalog.RESTORATIONS else "other", material=i.get("material", ""),
                      shade=i.get("shade", ""), notes=i.get("notes", ""))
             for i in scan.item_list]
    if items:
        return items
    return [ItemData(teeth=[], restoration=restoration_for(scan.procedure), notes=scan.procedure)]


def restoration_for(procedure: str) -> str:
    """Our restoration for a vendor's procedure name ("Crown", "Implant Crown", "Invisalign"...)."""
    text = procedure.lower()
    return next((key for word, key in PROCEDURES if word in text), "other")


def _follow_stage(scan: Scan, previous: OrderStage | None, files_changed: bool, actor: Actor) -> None:
    """What the vendor's new status means for the case (docs/vendors/itero.md, flows 1-5)."""
    if previous is scan.stage and not files_changed:
        return
    case = db.session.get(LabCase, scan.case_id)
    vendor = scan.vendor.label
    try:
        if scan.stage is OrderStage.RESCAN and case.status in Status.awaiting_lab():
            lifecycle.move(case, Status.RESCAN, actor=actor,
                           reason=f"{vendor} sent the scan back to the doctor for a rescan.")
        elif scan.stage is OrderStage.READY and case.status is Status.RESCAN and (
                files_changed or previous is OrderStage.RESCAN):
            lifecycle.move(case, Status.DRAFT, actor=actor,
                           detail={"note": f"new scan from {vendor}: check the prescription and send it again"})
    except IllegalMove:
        pass  # the case has moved on (or was closed) since; the scan's own row records the report


def still_scanning(scan: Scan) -> bool:
    """The vendor is still capturing or uploading it: no files yet, and not complete. Such a scan
    waits (it is not a scan to send yet) and joins its case once the vendor reports it complete."""
    return scan.stage is OrderStage.IN_PROGRESS and not scan.current_files


def _settle(scan: Scan) -> None:
    """The inbox state follows from the scan: on a case, still at the vendor, or waiting for a
    person and why."""
    if scan.inbox is InboxState.DISMISSED:
        return
    if scan.case_id is not None:
        scan.inbox = InboxState.LINKED
        return
    if still_scanning(scan):
        scan.inbox = InboxState.WAITING
        scan.problem = f"Still being scanned at {scan.vendor.label}; it joins a case when the scan is complete."
        return
    if scan.inbox is InboxState.WAITING:
        scan.problem = ""  # the vendor's "still scanning" note no longer holds
    scan.inbox = InboxState.PENDING
    if scan.patient_id is None:
        twins = same_name_and_birth(scan.practice_id, scanner_ref(scan))
        ref = scan.patient_chart_number and f"chart number {scan.patient_chart_number}"
        if len(twins) > 1:
            listed = "; ".join(f"{p.last_name}, {p.first_name} · chart {p.chart_number or 'none'}" for p in twins)
            scan.problem = (f"{len(twins)} patients of this practice have this name and birth date ({listed})"
                            f"{f' and none has {ref}' if ref else ''}: choose the right one.")[:300]
        else:
            scan.problem = (f"No patient of this practice has {ref or 'this name and birth date'}"
                            f"{' or this name and birth date' if ref else ''}; match the patient.")
    elif not scan.problem:
        scan.problem = "Choose the case for this scan, or create one."


# -- what a person does in the inbox ---------------------------------------------------------------

def assign_patient(scan: Scan, patient: Patient, actor: Actor, *, confirmed: bool = False) -> Ingested:
    """A person matched the scan to `patient`: then it joins or creates a case like any other.
    When the scanner's name or birth date is not the patient's, nothing changes until the person
    has seen both and confirmed (NeedsConfirmation); the match is then audited as an override."""
    if patient.practice_id != scan.practice_id:
        raise ScanError("Choose a patient of this practice.")
    if scan.case_id is not None:
        raise ScanError("This scan is already on a case.")
    lines = _check_same_person(scan, patient, confirmed)
    before = {"patient_id": scan.patient_id}
    scan.patient_id, scan.matched_by, scan.problem = patient.id, "person", ""
    _record_match(scan, patient, before, lines, actor)
    action = _place(scan, scan.integration, actor)
    if scan.case_id is not None:
        _follow_stage(scan, None, True, actor)
    _settle(scan)
    return Ingested(scan, "updated", action)


def set_jaw(scan: Scan, file_id: int, jaw: Jaw, actor: Actor) -> ScanFile:
    """A person says which jaw a scan file holds (the shape was not sure, or was wrong). It stays
    theirs: later vendor reports and re-reads do not change it. Bites are relinked; audited."""
    row = next((f for f in scan.current_files if f.id == file_id), None)
    if row is None or row.kind != "scan":
        raise ScanError("Choose one of the scan's current mesh files.")
    if row.jaw is jaw and row.jaw_source == SOURCE_PERSON:
        raise ScanError(f"{row.file_name} is already set to {jaw.value}.")
    before = {"file_id": row.id, "file": row.file_name, "jaw": row.jaw.value, "jaw_source": row.jaw_source,
              "jaw_note": row.jaw_note}
    row.jaw, row.jaw_source = jaw, SOURCE_PERSON
    row.jaw_note = f"set by {actor.label or 'a person'}"[:200]
    db.session.flush()
    _link_bites(scan)
    record("scan.jaw_set", "scan", scan.id, before=before, after={
        "file_id": row.id, "file": row.file_name, "jaw": jaw.value, "jaw_source": SOURCE_PERSON},
        actor=actor, practice_id=scan.practice_id)
    return row


def assign_case(scan: Scan, case: LabCase, actor: Actor, *, confirmed: bool = False) -> None:
    """A person put the scan on `case`. When the scan has no patient yet it takes the case's, which
    is matching the patient: the same confirmation as assign_patient when the scanner's name or
    birth date differs."""
    if scan.case_id == case.id:
        raise ScanError(f"This scan is already on {case.number}.")
    if scan.case_id is not None:
        raise ScanError("This scan is already on another case.")
    if scan.patient_id is None and case.practice_id == scan.practice_id:
        lines = _check_same_person(scan, case.patient, confirmed, target=case)
        if any(line.differs for line in lines):
            _record_match(scan, case.patient, {"patient_id": None}, lines, actor)
    link(scan, case, actor)
    _follow_stage(scan, None, True, actor)


def new_case_for(scan: Scan, actor: Actor) -> LabCase:
    """A person asked for a new case from the scan, even though the patient has open drafts."""
    if scan.case_id is not None:
        raise ScanError("This scan is already on a case.")
    if scan.patient_id is None:
        raise ScanError("Match the patient first.")
    case, problem = _new_case(scan, scan.integration, actor)
    link(scan, case, actor, created=True)
    scan.problem = problem
    return case


def dismiss(scan: Scan, reason: str, actor: Actor) -> None:
    if scan.case_id is not None:
        raise ScanError("A scan on a case can't be dismissed.")
    if not reason.strip():
        raise ScanError("Say why the scan is set aside.")
    scan.inbox, scan.problem = InboxState.DISMISSED, reason.strip()[:300]
    record("scan.dismissed", "scan", scan.id, after={"reason": scan.problem}, actor=actor,
           practice_id=scan.practice_id)


def restore(scan: Scan, actor: Actor) -> None:
    if scan.inbox is not InboxState.DISMISSED:
        raise ScanError("This scan is not dismissed.")
    scan.inbox, scan.problem = InboxState.PENDING, ""
    record("scan.restored", "scan", scan.id, actor=actor, practice_id=scan.practice_id)
    if scan.patient_id is None:
        _match_patient(scan, actor)
    if scan.patient_id is not None and not still_scanning(scan):
        _place(scan, scan.integration, actor)
    _settle(scan)

