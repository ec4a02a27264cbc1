"""Bringing a practice management system's records in: providers, laboratories, patients and
appointments, read incrementally through the integration's PMS adapter (portal/integrations/base.py).

`run_pms_sync` reads each resource changed since its saved high-water mark, page by page, and
applies them in batches of a few pages, each in its own transaction (bulk inserts and updates,
one audit row for the batch's changes, the sync's live progress on the integration), so memory
stays flat in the number of rows. The pages are fetched a few ahead on a thread of their own
(`read_ahead`), which only speaks HTTP; no write of ours is open while it waits for the PMS. A resource's mark moves only once all its pages are
applied: to the PMS server's clock when the read began (`adapter.server_time`), so whatever changed
while the pages were read is read again next time; the last primary key read is kept beside it.
A failed read keeps the old mark: the next sync reads the same range again (applying a row twice
changes nothing). 429 and 5xx back off (the integration is not read again before Retry-After, and
the job never sleeps); a 401 pauses the integration with a message for an admin.

Matching (a PMS row to a Lab Manager row): by the PMS key kept as the row's external id (Open
Dental's PatNum, ProvNum, AptNum, the same column a CSV import of Open Dental's exports fills, so
the same patient from a CSV and from the API is one row); then a patient by chart number (the
ChartNumber, or the PatNum where it is blank, as the CSV import keys it); then by first name, last
name and birth date among patients not linked yet. Two or more candidates: the patient waits for a
person (`PmsMatch`, on the integration's page) and nothing is created. A provider by abbreviation.

A seat appointment that moves, or is broken, unscheduled or deleted in the PMS (deletions are read
from the PMS's appointment history, `deleted_appointments`), changes its case in the same sync:
the seat date and seat risk follow, and the case's timeline says what happened. Such a visit is
kept, marked (`Appointment.not_happening`), and never offered or chosen as a seat date again. A
patient the PMS now lists as deceased, archived or inactive is marked too (`Patient.pms_standing`,
shown on the patient's cases), and each open case of theirs says so on its timeline.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from queue import Full, Queue

from flask import current_app

from sqlalchemy import func, insert, select, update

from portal.audit.actor import Actor
from portal.audit.record import record
from portal.cases.models import LabCase
from portal.cases.risk import refresh_risk
from portal.cases.status import Status
from portal.extensions import db
from portal.integrations import outcomes
from portal.integrations.http import VendorError
from portal.integrations.models import PmsLaboratory, PmsMatch, ScannerIntegration
from portal.people.models import Appointment, AppointmentKind, Patient, Provider
from portal.people.services import infer_kind
from portal.practices.models import utcnow
from portal.queue import SCANNER_SYNC

log = logging.getLogger(__name__)
ENTITY = "scanner_integration"
OPEN = [s for s in Status if s not in (Status.FITTED, Status.CANCELLED)]


def cursors(integration: ScannerIntegration) -> dict:
    return dict(integration.config.get("cursors") or {})


def run_pms_sync(integration_id: int, source: str = SCANNER_SYNC.func) -> dict:
    """Read every resource of one PMS integration and apply what changed; the caller owns the app context."""
    from portal.integrations.registry import adapter_for

    integration = db.session.get(ScannerIntegration, integration_id)
    if integration is None or not integration.active:
        db.session.rollback()
        return {"skipped": True}
    wait = outcomes.retry_wait(integration)
    if wait is not None:
        db.session.rollback()
        return {"skipped": True, "retry_after": round(wait, 1)}
    adapter = adapter_for(integration)
    actor = Actor.vendor(integration, source)
    marks = cursors(integration)
    integration.set_config(progress={"state": "reading", "started": utcnow().isoformat(timespec="seconds")})
    db.session.commit()  # nothing of ours is open while the PMS is called
    totals: dict[str, Counter] = {}
    skipped: list[tuple[str, str]] = []
    try:
        for resource in adapter.RESOURCES:
            since = (marks.get(resource) or {}).get("since")
            if since is None and resource in STARTS_WITH:
                # Nothing before the first read of the resource it follows can matter (a visit
                # deleted before the appointments were first read never came in).
                since = (marks.get(STARTS_WITH[resource]) or {}).get("since")
            counts: Counter = Counter()
            last_key = (marks.get(resource) or {}).get("last_key")
            for page in batches(read_ahead(adapter.read(resource, since))):
                apply_page(integration_id, resource, page, actor, counts)
                last_key = page[-1]["ref"]
            skipped += adapter.skipped
            totals[resource] = counts
            integration = db.session.get(ScannerIntegration, integration_id)
            marks[resource] = {"since": adapter.server_time or since, "last_key": last_key}
            integration.set_config(cursors=marks)
            db.session.commit()
        # Patients a person matched since the last sync: their appointments were left out while
        # they waited (no patient to hang them on), so read them now, whatever their time stamp.
        waiting = list(db.session.get(ScannerIntegration, integration_id).config.get("pending_patients") or [])
        for ref in waiting:
            counts = totals.setdefault("appointments", Counter())
            for page in adapter.read("appointments", None, patient_ref=ref):
                apply_page(integration_id, "appointments", page, actor, counts)
        if waiting:
            integration = db.session.get(ScannerIntegration, integration_id)
            integration.set_config(pending_patients=[r for r in integration.config.get("pending_patients") or []
                                                     if r not in waiting])
            db.session.commit()
    except VendorError as exc:
        db.session.rollback()
        integration = db.session.get(ScannerIntegration, integration_id)
        integration.set_config(progress={"state": "failed", "error": str(exc)[:200]})
        outcomes.failed(integration, exc, actor)
        db.session.commit()
        return {"error": str(exc), **{r: dict(c) for r, c in totals.items()}}
    integration = db.session.get(ScannerIntegration, integration_id)
    previous_error = integration.last_error
    if integration.connected_at is None:
        integration.connected_at = utcnow()
    integration.set_config(progress={"state": "done", "finished": utcnow().isoformat(timespec="seconds"),
                                     "requests": adapter.requests,
                                     **{r: sum(c.values()) for r, c in totals.items()}})
    outcomes.succeeded(integration, actor, recovered=not skipped)
    if skipped:
        outcomes.unreadable(integration, skipped, actor, previous_error)
    db.session.commit()
    return {"requests": adapter.requests, **{r: dict(c) for r, c in totals.items()}}


READ_AHEAD = 4  # pages fetched while the previous ones are applied
BATCH_ROWS = 500  # rows applied in one transaction (five of Open Dental's pages)


def read_ahead(pages: Iterator[list[dict]], depth: int = READ_AHEAD) -> Iterator[list[dict]]:
    """The adapter's pages, fetched on a thread of their own while this one applies the earlier
    ones, at most `depth` ahead (memory stays bounded). The thread only speaks HTTP: the adapter
    read the integration's settings before the first page. Its errors are raised here, in order."""
    app = current_app._get_current_object()
    queue: Queue = Queue(maxsize=depth)
    stopping = threading.Event()
    done = object()

    def fetch():
        with app.app_context():
            try:
                for page in pages:
                    while not stopping.is_set():
                        try:
                            queue.put(page, timeout=0.2)
                            break
                        except Full:
                            continue
                    if stopping.is_set():
                        return
                queue.put(done)
            except BaseException as exc:  # handed to the reader, raised there
                queue.put(exc)

    thread = threading.Thread(target=fetch, daemon=True, name="pms-read-ahead")
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopping.set()
        thread.join(timeout=30)


def batches(pages: Iterator[list[dict]], rows: int = BATCH_ROWS) -> Iterator[list[dict]]:
    """Pages joined into batches of about `rows` rows, each applied in one transaction."""
    batch: list[dict] = []
    for page in pages:
        batch += page
        if len(batch) >= rows:
            yield batch
            batch = []
    if batch:
        yield batch


def apply_page(integration_id: int, resource: str, page: list[dict], actor: Actor, counts: Counter) -> None:
    """One page in one transaction: its rows, one audit row of what changed, the live progress."""
    integration = db.session.get(ScannerIntegration, integration_id)
    changed = APPLY[resource](integration, page, actor)
    for outcome, refs in changed.items():
        if refs:
            counts[outcome] += len(refs)
    written = {k: v for k, v in changed.items() if k != "unchanged" and v}
    if written:
        record(f"pms.{resource}_synced", ENTITY, integration.id,
               after={k: v[:100] for k, v in written.items()}, actor=actor, practice_id=integration.practice_id)
    progress = dict(integration.config.get("progress") or {})
    progress[resource] = sum(counts.values())
    integration.set_config(progress=progress)
    db.session.commit()


# -- providers ----------------------------------------------------------------------------------------

def apply_providers(integration: ScannerIntegration, page: list[dict], actor: Actor) -> dict[str, list[str]]:
    practice_id = integration.practice_id
    out: dict[str, list[str]] = {"created": [], "updated": [], "linked": [], "unchanged": []}
    existing = {p.external_id: p for p in db.session.scalars(select(Provider).where(
        Provider.practice_id == practice_id, Provider.external_id.in_([r["ref"] for r in page])))}
    by_abbr = {p.abbr: p for p in db.session.scalars(select(Provider).where(
        Provider.practice_id == practice_id, Provider.abbr.in_([r["abbr"] for r in page if r["abbr"]])))}
    for row in page:
        values = {"name": row["name"][:200], "active": not row["hidden"]}
        provider = existing.get(row["ref"])
        if provider is None:
            candidate = by_abbr.get(row["abbr"])
            if candidate is not None and not candidate.external_id:
                provider = candidate
                provider.external_id = row["ref"]
                out["linked"].append(row["ref"])
        if provider is None:
            abbr = row["abbr"] or f"P{row['ref']}"
            if abbr in by_abbr:
                abbr = f"{abbr[:12]}-{row['ref']}"[:20]
            provider = Provider(practice_id=practice_id, abbr=abbr, external_id=row["ref"], **values)
            db.session.add(provider)
            by_abbr[abbr] = provider
            out["created"].append(row["ref"])
            continue
        if any(getattr(provider, k) != v for k, v in values.items()):
            for k, v in values.items():
                setattr(provider, k, v)
            if row["ref"] not in out["linked"]:
                out["updated"].append(row["ref"])
        elif row["ref"] not in out["linked"]:
            out["unchanged"].append(row["ref"])
    db.session.flush()
    return out


# -- laboratories -------------------------------------------------------------------------------------

def apply_laboratories(integration: ScannerIntegration, page: list[dict], actor: Actor) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": []}
    existing = {lab.ref: lab for lab in db.session.scalars(select(PmsLaboratory).where(
        PmsLaboratory.integration_id == integration.id, PmsLaboratory.ref.in_([r["ref"] for r in page])))}
    for row in page:
        values = {"name": row["name"], "phone": row["phone"], "email": row["email"], "hidden": row["hidden"]}
        lab = existing.get(row["ref"])
        if lab is None:
            db.session.add(PmsLaboratory(integration_id=integration.id, ref=row["ref"], **values))
            out["created"].append(row["ref"])
        elif any(getattr(lab, k) != v for k, v in values.items()):
            for k, v in values.items():
                setattr(lab, k, v)
            out["updated"].append(row["ref"])
        else:
            out["unchanged"].append(row["ref"])
    db.session.flush()
    return out


# -- patients -----------------------------------------------------------------------------------------

def _patient_values(row: dict) -> dict:
    return {"first_name": row["first_name"] or "?", "last_name": row["last_name"] or "?",
            "date_of_birth": row["date_of_birth"], "email": row["email"], "phone": row["phone"],
            "pms_standing": row.get("standing", "")}


def _name_key(first: str, last: str, born) -> tuple:
    return (first.strip().lower(), last.strip().lower(), born)


def apply_patients(integration: ScannerIntegration, page: list[dict], actor: Actor) -> dict[str, list[str]]:
    practice_id = integration.practice_id
    out: dict[str, list[str]] = {"created": [], "updated": [], "linked": [], "waiting": [], "unchanged": []}
    refs = [r["ref"] for r in page]
    existing = {p.external_id: p for p in db.session.scalars(select(Patient).where(
        Patient.practice_id == practice_id, Patient.external_id.in_(refs)))}
    new_rows = [r for r in page if r["ref"] not in existing]
    charts = {r["chart_number"] or r["ref"] for r in new_rows}
    by_chart = {p.chart_number: p for p in db.session.scalars(select(Patient).where(
        Patient.practice_id == practice_id, Patient.chart_number.in_(charts)))} if charts else {}
    births = {r["date_of_birth"] for r in new_rows if r["date_of_birth"]}
    by_name: dict[tuple, list[Patient]] = {}
    if births:
        for p in db.session.scalars(select(Patient).where(
                Patient.practice_id == practice_id, Patient.external_id.is_(None),
                Patient.date_of_birth.in_(births))):
            by_name.setdefault(_name_key(p.first_name, p.last_name, p.date_of_birth), []).append(p)
    waiting = {m.ref: m for m in db.session.scalars(select(PmsMatch).where(
        PmsMatch.integration_id == integration.id, PmsMatch.resource == "patients", PmsMatch.ref.in_(refs)))}
    inserts, updates, standing = [], [], {}
    for row in page:
        ref, values = row["ref"], _patient_values(row)
        patient = existing.get(ref)
        if patient is not None:
            if any(getattr(patient, k) != v for k, v in values.items()):
                if patient.pms_standing != values["pms_standing"]:
                    standing[patient.id] = (patient.pms_standing, values["pms_standing"])
                updates.append({"id": patient.id, **values})
                out["updated"].append(ref)
            else:
                out["unchanged"].append(ref)
            continue
        if ref in waiting and waiting[ref].state == "waiting":
            waiting[ref].payload = json.dumps(row, default=str)  # a person still decides; keep it current
            out["waiting"].append(ref)
            continue
        chart = row["chart_number"] or ref
        candidate = by_chart.get(chart)
        if candidate is not None and candidate.external_id and candidate.external_id != ref:
            candidate = None  # that chart belongs to another PMS patient: not this one
            chart = f"{chart[:30]}-{ref}"
        if candidate is None and row["date_of_birth"]:
            same = by_name.get(_name_key(row["first_name"], row["last_name"], row["date_of_birth"]), [])
            same = [p for p in same if not p.external_id]
            if len(same) > 1:
                _wait_for_person(integration, row, same, waiting.get(ref), actor)
                out["waiting"].append(ref)
                continue
            candidate = same[0] if same else None
        if candidate is not None:
            link_patient(candidate, ref, values, actor, integration)
            out["linked"].append(ref)
            continue
        if chart in by_chart or any(i["chart_number"] == chart for i in inserts):
            chart = f"{chart[:30]}-{ref}"
        inserts.append({"practice_id": practice_id, "chart_number": chart, "external_id": ref, "sex": "", **values})
        out["created"].append(ref)
    if inserts:
        db.session.execute(insert(Patient), inserts)
    if updates:
        db.session.execute(update(Patient), updates)
    if standing:
        out["cases"] = standing_changed(integration, standing, actor)
    db.session.flush()
    return out


def standing_changed(integration: ScannerIntegration, changes: dict[int, tuple[str, str]], actor: Actor) -> list[str]:
    """Patients the PMS now lists as deceased, archived, inactive... (or as patients again): each
    of their open cases says so on its timeline, so the coordinator stops (or resumes) the work."""
    label = integration.vendor.label
    numbers = []
    for case in db.session.scalars(select(LabCase).where(LabCase.patient_id.in_(list(changes)),
                                                         LabCase.status.in_(OPEN)).order_by(LabCase.id)):
        was, now = changes[case.patient_id]
        reason = (f"{label} now lists the patient as {now}; check whether this work should go on."
                  if now else f"{label} lists the patient as a current patient again (was {was}).")
        record("case.patient_standing_changed", "lab_case", case.id, before={"standing": was or "patient"},
               after={"standing": now or "patient", "reason": reason}, actor=actor, practice_id=case.practice_id)
        numbers.append(case.number)
    return numbers


def link_patient(patient: Patient, ref: str, values: dict, actor: Actor, integration: ScannerIntegration) -> None:
    """A patient here is the PMS's patient `ref`: keep the key, take the PMS's details (audited)."""
    before = {"external_id": patient.external_id, **{k: getattr(patient, k) for k in values}}
    patient.external_id = ref
    for k, v in values.items():
        setattr(patient, k, v)
    if before["pms_standing"] != patient.pms_standing:
        standing_changed(integration, {patient.id: (before["pms_standing"], patient.pms_standing)}, actor)
    record("patient.linked", "patient", patient.id, before={k: str(v) if v else v for k, v in before.items()},
           after={"external_id": ref, "integration": integration.id,
                  **{k: str(v) if v else v for k, v in values.items()}},
           actor=actor, practice_id=patient.practice_id)


def _wait_for_person(integration, row: dict, candidates: list[Patient], match: PmsMatch | None, actor: Actor) -> None:
    ids = ",".join(str(p.id) for p in candidates)
    if match is None:
        match = PmsMatch(integration_id=integration.id, resource="patients", ref=row["ref"])
        db.session.add(match)
    match.payload, match.candidates, match.state = json.dumps(row, default=str), ids, "waiting"
    db.session.flush()
    record("pms.match_waiting", ENTITY, integration.id,
           after={"patient_ref": row["ref"], "name": f"{row['first_name']} {row['last_name']}",
                  "candidates": [p.id for p in candidates]}, actor=actor, practice_id=integration.practice_id)


def waiting_matches(integration: ScannerIntegration) -> list[PmsMatch]:
    return list(db.session.scalars(select(PmsMatch).where(
        PmsMatch.integration_id == integration.id, PmsMatch.state == "waiting").order_by(PmsMatch.id)))


def resolve_match(match: PmsMatch, patient_id: int | None, actor: Actor) -> Patient:
    """A person decided: the PMS patient is `patient_id` (one of the candidates), or a new patient
    (None). The patient's appointments are read on the next sync of that patient (`refresh_patient`)."""
    from portal.errors import UserError

    if match.state != "waiting":
        raise UserError("Someone already decided this match.")
    integration = db.session.get(ScannerIntegration, match.integration_id)
    row = match.data
    born = dt.date.fromisoformat(row["date_of_birth"]) if row.get("date_of_birth") else None
    values = {**_patient_values({**row, "date_of_birth": born})}
    taken = db.session.scalar(select(Patient.id).where(Patient.practice_id == integration.practice_id,
                                                       Patient.external_id == match.ref))
    if taken is not None:
        raise UserError("That PMS patient is already linked to a patient here.")
    if patient_id is None:
        chart = row.get("chart_number") or match.ref
        if db.session.scalar(select(Patient.id).where(Patient.practice_id == integration.practice_id,
                                                      Patient.chart_number == chart)):
            chart = f"{chart[:30]}-{match.ref}"
        patient = Patient(practice_id=integration.practice_id, chart_number=chart, external_id=match.ref, sex="",
                          **values)
        db.session.add(patient)
        db.session.flush()
        record("patient.create", "patient", patient.id, after={"external_id": match.ref, "chart_number": chart,
                                                               "integration": integration.id},
               actor=actor, practice_id=integration.practice_id)
        match.state = "created"
    else:
        if patient_id not in match.candidate_ids:
            raise UserError("Choose one of the patients listed.")
        patient = db.session.get(Patient, patient_id)
        link_patient(patient, match.ref, values, actor, integration)
        match.state = "linked"
    match.patient_id, match.resolved_at = patient.id, utcnow()
    record("pms.match_resolved", ENTITY, integration.id,
           after={"patient_ref": match.ref, "patient_id": patient.id, "as": match.state}, actor=actor,
           practice_id=integration.practice_id)
    # The patient's appointments were skipped while they waited: read them with the next sync.
    pending = list(integration.config.get("pending_patients") or [])
    integration.set_config(pending_patients=sorted(set(pending) | {match.ref}))
    return patient


# -- appointments -------------------------------------------------------------------------------------

def apply_appointments(integration: ScannerIntegration, page: list[dict], actor: Actor) -> dict[str, list[str]]:
    practice_id = integration.practice_id
    out: dict[str, list[str]] = {"created": [], "updated": [], "linked": [], "unchanged": [], "no_patient": [],
                                 "cases": []}
    refs = [r["ref"] for r in page]
    existing = {a.external_id: a for a in db.session.scalars(select(Appointment).where(
        Appointment.practice_id == practice_id, Appointment.external_id.in_(refs)))}
    patients = dict(db.session.execute(select(Patient.external_id, Patient.id).where(
        Patient.practice_id == practice_id, Patient.external_id.in_({r["patient_ref"] for r in page}))).all())
    providers = dict(db.session.execute(select(Provider.external_id, Provider.id).where(
        Provider.practice_id == practice_id, Provider.external_id.in_(
            {r["provider_ref"] for r in page if r["provider_ref"]}))).all())
    # A visit typed in here before the PMS was connected: the same patient at the same minute is
    # the same visit, so it is linked (it keeps its cases), not booked twice.
    new = [r for r in page if r["ref"] not in existing and r["starts_at"] is not None
           and r["patient_ref"] in patients]
    typed: dict[tuple, Appointment] = {}
    if new:
        for a in db.session.scalars(select(Appointment).where(
                Appointment.practice_id == practice_id, Appointment.external_id.is_(None),
                Appointment.patient_id.in_({patients[r["patient_ref"]] for r in new}),
                Appointment.starts_at.in_({r["starts_at"] for r in new})).order_by(Appointment.id)):
            typed.setdefault((a.patient_id, a.starts_at), a)
    seats: dict[int, list[LabCase]] = {}
    ids = [a.id for a in existing.values()] + [a.id for a in typed.values()]
    if ids:
        for case in db.session.scalars(select(LabCase).where(LabCase.seat_appointment_id.in_(ids),
                                                             LabCase.status.in_(OPEN))):
            seats.setdefault(case.seat_appointment_id, []).append(case)
    inserts = []
    for row in page:
        ref, appointment = row["ref"], existing.get(row["ref"])
        patient_id = patients.get(row["patient_ref"])
        if patient_id is None:
            out["no_patient"].append(ref)  # their patient waits for a person, or is in another clinic
            continue
        values = {"patient_id": patient_id, "provider_id": providers.get(row["provider_ref"]),
                  "note": (row["note"] or row["procedure"])[:500], "pms_status": row["status"][:20],
                  "not_happening": row["not_happening"]}
        if row["starts_at"] is not None:
            values["starts_at"] = row["starts_at"]
        if appointment is None and (patient_id, row["starts_at"]) in typed:
            appointment = typed.pop((patient_id, row["starts_at"]))
            appointment.external_id = ref
            out["linked"].append(ref)
        if appointment is None:
            if row["starts_at"] is None:
                out["unchanged"].append(ref)  # an unscheduled visit with no time: nothing to show yet
                continue
            inserts.append({"practice_id": practice_id, "external_id": ref,
                            "kind": infer_kind(row["procedure"], row["note"]), **values})
            out["created"].append(ref)
            continue
        kind = infer_kind(row["procedure"], row["note"])
        if kind is not AppointmentKind.OTHER:
            values["kind"] = kind  # an inferred "other" never overwrites a kind set here
        before = {k: getattr(appointment, k) for k in values}
        if before == values:
            if ref not in out["linked"]:
                out["unchanged"].append(ref)
            continue
        for k, v in values.items():
            setattr(appointment, k, v)
        if ref not in out["linked"]:
            out["updated"].append(ref)
        for case in seats.get(appointment.id, []):
            if seat_changed(case, appointment, before, row, actor, integration):
                out["cases"].append(case.number)
    if inserts:
        db.session.execute(insert(Appointment), inserts)
    db.session.flush()
    return out


def seat_changed(case: LabCase, appointment: Appointment, before: dict, row: dict, actor: Actor,
                 integration: ScannerIntegration) -> bool:
    """The case's seat appointment changed in the PMS: follow it (audited on the case)."""
    was = before.get("starts_at")
    gone = row["not_happening"]
    moved = "starts_at" in before and was != appointment.starts_at
    if not gone and not moved:
        return False
    risk_before = case.seat_risk
    label = integration.vendor.label
    if gone:
        case.seat_appointment_id = None
        case.seat_appointment = None
        action, reason = "seat_appointment_cancelled", (
            f"The seat appointment on {was:%a %d %b %H:%M} is {gone} in {label}; the case has no seat date "
            "until a new one is booked.")
    else:
        db.session.expire(case, ["seat_appointment"])
        action, reason = "seat_appointment_moved", (
            f"The seat appointment moved in {label} from {was:%a %d %b %H:%M} to "
            f"{appointment.starts_at:%a %d %b %H:%M}.")
    refresh_risk(case)
    case.updated_at = utcnow()
    record(f"case.{action}", "lab_case", case.id,
           before={"seat": was.isoformat(sep=" ") if was else None, "seat_risk": risk_before},
           after={"seat": None if gone else appointment.starts_at.isoformat(sep=" "), "seat_risk": case.seat_risk,
                  "appointment_status": row["status"], "reason": reason},
           actor=actor, practice_id=case.practice_id)
    return True


def apply_deleted_appointments(integration: ScannerIntegration, page: list[dict], actor: Actor) -> dict[str, list[str]]:
    """Visits deleted in the PMS: kept here, marked deleted (never offered as a seat date again); a
    case seated on one loses its seat date and its timeline says why, as for a broken visit."""
    practice_id = integration.practice_id
    out: dict[str, list[str]] = {"deleted": [], "unchanged": [], "cases": []}
    refs = {r["appointment_ref"] for r in page}
    existing = {a.external_id: a for a in db.session.scalars(select(Appointment).where(
        Appointment.practice_id == practice_id, Appointment.external_id.in_(refs)))}
    seats: dict[int, list[LabCase]] = {}
    if existing:
        for case in db.session.scalars(select(LabCase).where(
                LabCase.seat_appointment_id.in_([a.id for a in existing.values()]), LabCase.status.in_(OPEN))):
            seats.setdefault(case.seat_appointment_id, []).append(case)
    for row in page:
        appointment = existing.get(row["appointment_ref"])
        if appointment is None or appointment.not_happening == "deleted":
            out["unchanged"].append(row["appointment_ref"])  # never came in, or already known
            continue
        before = {"starts_at": appointment.starts_at, "not_happening": appointment.not_happening}
        appointment.not_happening, appointment.pms_status = "deleted", "Deleted"
        out["deleted"].append(row["appointment_ref"])
        for case in seats.get(appointment.id, []):
            if seat_changed(case, appointment, before, {"status": "Deleted", "not_happening": "deleted"}, actor,
                            integration):
                out["cases"].append(case.number)
    db.session.flush()
    return out


APPLY = {"providers": apply_providers, "laboratories": apply_laboratories, "patients": apply_patients,
         "appointments": apply_appointments, "deleted_appointments": apply_deleted_appointments}
# A resource first read from another's mark (see run_pms_sync).
STARTS_WITH = {"deleted_appointments": "appointments"}


def pms_counts(integration: ScannerIntegration) -> dict:
    """What the integration's page shows: how many rows here came from it, and what waits."""
    practice_id = integration.practice_id
    count = lambda model: db.session.scalar(select(func.count()).select_from(model).where(  # noqa: E731
        model.practice_id == practice_id, model.external_id.is_not(None)))
    return {"patients": count(Patient), "providers": count(Provider), "appointments": count(Appointment),
            "waiting": db.session.scalar(select(func.count()).select_from(PmsMatch).where(
                PmsMatch.integration_id == integration.id, PmsMatch.state == "waiting"))}



# -- the integration's page ---------------------------------------------------------------------------

def page_view(integration: ScannerIntegration, organization_id: int) -> dict:
    """What the integration's page shows of a PMS: the live progress of the sync, how many rows
    came from it, the patients waiting for a person (with their candidates), its laboratories."""
    from portal.integrations.writeback import unwritten_count
    from portal.labs.models import Lab

    matches = waiting_matches(integration)
    ids = {i for m in matches for i in m.candidate_ids}
    people = {p.id: p for p in db.session.scalars(select(Patient).where(Patient.id.in_(ids)))} if ids else {}
    return {
        "progress": integration.config.get("progress") or {},
        "cursors": cursors(integration),
        "counts": pms_counts(integration),
        "unwritten": unwritten_count(integration) if integration.active else 0,
        "matches": [(m, [people[i] for i in m.candidate_ids if i in people]) for m in matches],
        "laboratories": list(db.session.scalars(select(PmsLaboratory).where(
            PmsLaboratory.integration_id == integration.id).order_by(PmsLaboratory.name))),
        "labs": list(db.session.scalars(select(Lab).where(Lab.organization_id == organization_id,
                                                          Lab.active.is_(True)).order_by(Lab.name))),
    }


def link_laboratory(integration: ScannerIntegration, row_id: int, lab_id: int | None, organization_id: int,
                    actor: Actor) -> PmsLaboratory:
    """Link the PMS's laboratory to a lab here (None unlinks). A lab here is linked to one PMS
    laboratory at most, so a write-back never has to guess."""
    from portal.errors import UserError
    from portal.labs.models import Lab

    row = db.session.get(PmsLaboratory, row_id)
    if row is None or row.integration_id != integration.id:
        raise UserError("That laboratory is not one of this integration's.")
    if lab_id is not None:
        lab = db.session.get(Lab, lab_id)
        if lab is None or lab.organization_id != organization_id:
            raise UserError("Choose a lab from the list.")
        other = db.session.scalar(select(PmsLaboratory).where(
            PmsLaboratory.integration_id == integration.id, PmsLaboratory.lab_id == lab_id, PmsLaboratory.id != row.id))
        if other is not None:
            raise UserError(f"{lab.name} is already linked to {integration.vendor.label}'s “{other.name}”; "
                            "unlink that one first.")
    before = row.lab_id
    row.lab_id = lab_id
    db.session.flush()
    db.session.refresh(row, ["lab"])
    record("pms.laboratory_linked", ENTITY, integration.id,
           before={"laboratory": row.ref, "lab_id": before}, after={"laboratory": row.ref, "lab_id": lab_id},
           actor=actor, practice_id=integration.practice_id)
    return row
