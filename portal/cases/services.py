"""Rules and SQL for lab cases. Services flush; the request or job commits."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import bindparam, func, or_, select, update

from portal import events
from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.audit.record import record
from portal.cases import lifecycle
from portal.cases.duedates import add_business_days
from portal.cases.events import CaseCancelled, CaseEdited
from portal.cases.lifecycle import IllegalMove
from portal.cases.models import CaseItem, Counter, LabCase
from portal.cases.risk import closed_days, refresh_risk
from portal.cases.status import Status
from portal.clock import utcnow
from portal.errors import UserError
from portal.extensions import db
from portal.integrations.models import PmsLabCase
from portal.labs.models import Lab
from portal.people.models import Appointment, Patient, Provider
from portal.practices.models import Practice
from portal.scans.models import Scan


@dataclass
class ItemData:
    teeth: list[str]
    restoration: str
    material: str = ""
    shade: str = ""
    margin: str = ""
    notes: str = ""


@dataclass
class CaseData:
    patient_id: int
    provider_id: int | None
    lab_id: int | None
    items: list[ItemData]
    seat_appointment_id: int | None = None
    due_date: dt.date | None = None  # None: computed from the lab's turnaround
    instructions: str = ""
    fee: Decimal | None = None
    invoice_number: str = ""
    origin: str = "manual"
    origin_order_id: str = ""
    stage: str = "final"
    previous_stage_id: int | None = None
    extra: dict = field(default_factory=dict)


# Built once (an ingest of 1,000 orders numbers 1,000 cases): building it each time cost about as
# much as running it. An ORM statement, so the session flushes before the counter row is locked
# (as before); no counter is kept in step in the session (none is read after it is added).
_TAKE_NUMBER = (update(Counter).where(Counter.name == bindparam("counter")).values(value=Counter.value + 1)
                .returning(Counter.value).execution_options(synchronize_session=False))


def next_case_number(year: int) -> str:
    name = f"case-{year}"
    value = db.session.scalar(_TAKE_NUMBER, {"counter": name})
    if value is None:
        db.session.add(Counter(name=name, value=1))
        db.session.flush()
        value = 1
    return f"LC-{year}-{value:06d}"


def turnaround_days(lab: Lab | None, items: list[ItemData] | list[CaseItem]) -> int | None:
    """The longest turnaround among the items' services at this lab, or None if it offers none."""
    if lab is None:
        return None
    days = [s.turnaround_days for i in items if (s := lab.service_for(i.restoration))]
    return max(days) if days else None


def compute_due_date(practice_id: int, lab: Lab | None, items, start: dt.date | None = None) -> dt.date | None:
    days = turnaround_days(lab, items)
    if days is None:
        return None
    return add_business_days(start or dt.date.today(), days, closed_days(practice_id))


def _check_refs(practice: Practice, data: CaseData, held_lab: Lab | None = None) -> tuple[Patient, Lab | None]:
    """Every id in the input must belong to this practice (or its organisation, for labs).
    `held_lab` is used instead of loading the lab when it is the one `data` names."""
    patient = db.session.get(Patient, data.patient_id)
    if patient is None or patient.practice_id != practice.id:
        raise UserError("Choose a patient of this practice.", field="patient_id")
    if data.provider_id is not None:
        provider = db.session.get(Provider, data.provider_id)
        if provider is None or provider.practice_id != practice.id:
            raise UserError("Choose a provider of this practice.", field="provider_id")
    lab = None
    if data.lab_id is not None:
        lab = held_lab if held_lab is not None and held_lab.id == data.lab_id else db.session.get(Lab, data.lab_id)
        if lab is None or lab.organization_id != practice.organization_id:
            raise UserError("Choose one of your labs.", field="lab_id")
    if data.seat_appointment_id is not None:
        appt = db.session.get(Appointment, data.seat_appointment_id)
        if appt is None or appt.practice_id != practice.id or appt.patient_id != patient.id:
            raise UserError("Choose one of this patient's appointments.", field="seat_appointment_id")
        if appt.not_happening:
            raise UserError(f"That visit is {appt.not_happening} in the practice management system; choose a "
                            "booked one, or none yet.", field="seat_appointment_id")
    if data.previous_stage_id is not None:
        prev = db.session.get(LabCase, data.previous_stage_id)
        if prev is None or prev.practice_id != practice.id or prev.patient_id != patient.id:
            raise UserError("The earlier stage must be a case of this patient.", field="previous_stage_number")
    return patient, lab


def _snapshot(case: LabCase) -> dict:
    return {
        "patient_id": case.patient_id, "provider_id": case.provider_id, "lab_id": case.lab_id,
        "seat_appointment_id": case.seat_appointment_id, "due_date": case.due_date,
        "due_date_overridden": case.due_date_overridden, "instructions": case.instructions,
        "fee": case.fee, "invoice_number": case.invoice_number, "origin": case.origin,
        "origin_order_id": case.origin_order_id, "stage": case.stage,
        "previous_stage_id": case.previous_stage_id,
        "items": [
            {"teeth": i.teeth, "restoration": i.restoration, "material": i.material, "shade": i.shade,
             "margin": i.margin, "notes": i.notes}
            for i in case.items
        ],
    }


def _apply(case: LabCase, data: CaseData, lab: Lab | None) -> None:
    for name in ("patient_id", "provider_id", "lab_id", "seat_appointment_id", "instructions", "fee",
                 "invoice_number", "origin", "origin_order_id", "stage", "previous_stage_id"):
        setattr(case, name, getattr(data, name))
    # Update rows in place by position: replacing them would insert before the old rows are gone.
    existing = {item.position: item for item in case.items}
    for n, i in enumerate(data.items):
        row = existing.pop(n, None) or CaseItem(position=n)
        row.teeth, row.restoration, row.material = " ".join(i.teeth), i.restoration, i.material
        row.shade, row.margin, row.notes = i.shade, i.margin, i.notes
        if row not in case.items:
            case.items.append(row)
    for row in existing.values():
        case.items.remove(row)
    if data.due_date is not None:
        case.due_date, case.due_date_overridden = data.due_date, True
    else:
        start = case.sent_at.date() if case.sent_at else dt.date.today()
        case.due_date = compute_due_date(case.practice_id, lab, data.items, start)
        case.due_date_overridden = False
    db.session.flush()
    db.session.expire(case, ["seat_appointment", "lab", "patient", "provider"])
    refresh_risk(case)


def create_case(practice: Practice, data: CaseData, actor: Actor, *, lab: Lab | None = None) -> LabCase:
    """A new draft. `lab`: the Lab of `data.lab_id` when the caller holds it already (a sync reads
    its labs and their services once, portal/scans/lookups.py); it is checked all the same."""
    _, lab = _check_refs(practice, data, lab)
    if not data.items:
        raise UserError("A case needs at least one prescription item.", field="items")
    case = LabCase(practice_id=practice.id, number=next_case_number(dt.date.today().year),
                   status=Status.DRAFT)
    db.session.add(case)
    _apply(case, data, lab)
    record("case.create", "lab_case", case.id, after=_snapshot(case), actor=actor, practice_id=practice.id)
    return case


EDITABLE = frozenset({Status.DRAFT, Status.SENT, Status.ACKNOWLEDGED, Status.IN_PRODUCTION,
                      Status.ON_HOLD, Status.RESCAN, Status.DISPATCHED, Status.RECEIVED})


def update_case(case: LabCase, data: CaseData, actor: Actor) -> dict:
    """Apply an edit; returns the changed fields (before, after). Closed cases can't be edited."""
    if case.status not in EDITABLE:
        raise IllegalMove(f"{case.number} is {case.status.label}; a closed case can't be edited.")
    practice = db.session.get(Practice, case.practice_id)
    _, lab = _check_refs(practice, data)
    if case.status is not Status.DRAFT and data.lab_id != case.lab_id:
        raise UserError("The case is already with a lab; cancel it or make a remake to change labs.", field="lab_id")
    before = _snapshot(case)
    _apply(case, data, lab)
    after = _snapshot(case)
    changed = {k for k in after if before[k] != after[k]}
    if changed:
        case.updated_at = utcnow()
        record("case.update", "lab_case", case.id, before={k: before[k] for k in changed},
               after={k: after[k] for k in changed}, actor=actor, practice_id=case.practice_id)
        # A lab that has the case hears of a new due date or prescription (portal.labcomm decides how).
        events.publish(CaseEdited(case, {k: before[k] for k in changed}, frozenset(changed), actor))
    return {k: (before[k], after[k]) for k in changed}


def assign_lab(case: LabCase, lab_id: int, actor: Actor) -> bool:
    """Choose the lab of a draft (the board's bulk action): the same edit as the case form's,
    through update_case, so the checks, the due date from the lab's turnaround (unless set by
    hand), the seat risk and the audit row are the form's. False when it already has that lab."""
    if case.lab_id == lab_id:
        return False
    if case.status is not Status.DRAFT:
        raise IllegalMove(f"{case.number} is {case.status.label}: only a draft's lab can be chosen here; "
                          "cancel it or make a remake to change labs.")
    data = CaseData(
        patient_id=case.patient_id, provider_id=case.provider_id, lab_id=lab_id,
        seat_appointment_id=case.seat_appointment_id,
        due_date=case.due_date if case.due_date_overridden else None, instructions=case.instructions,
        fee=case.fee, invoice_number=case.invoice_number, origin=case.origin,
        origin_order_id=case.origin_order_id, stage=case.stage, previous_stage_id=case.previous_stage_id,
        items=[ItemData(teeth=i.teeth.split() if i.teeth else [], restoration=i.restoration, material=i.material,
                        shade=i.shade, margin=i.margin, notes=i.notes) for i in case.items],
    )
    update_case(case, data, actor)
    return True


def latest_event(case: LabCase):
    """The case's newest audit row (what an undo may put back), or None."""
    from portal.audit.models import AuditEvent

    return db.session.scalar(select(AuditEvent).where(
        AuditEvent.entity_type == "lab_case", AuditEvent.entity_id == str(case.id)).order_by(AuditEvent.seq.desc()).limit(1))


def undo_move(case: LabCase, seq: int, actor: Actor) -> Status:
    """Undo the move audited as row `seq` (lifecycle.undo says when that is allowed)."""
    latest = latest_event(case)
    if latest is None or latest.seq != seq:
        from portal.audit.models import AuditEvent

        event = db.session.scalar(select(AuditEvent).where(AuditEvent.seq == seq))
        if event is None or event.entity_type != "lab_case" or event.entity_id != str(case.id):
            raise IllegalMove(f"There is no such move of {case.number} to undo.")
    else:
        event = latest
    return lifecycle.undo(case, event, actor=actor, latest_seq=latest.seq if latest else 0)


def status_of(to: str, case: LabCase) -> Status:
    """The status a person asked to move `case` to, or IllegalMove for a word that is not one."""
    try:
        return Status(to)
    except ValueError:
        raise IllegalMove(f"“{to}” is not a status.") from None


def is_send(case: LabCase, to: Status) -> bool:
    """Moving to Sent from a draft (or a case returned for rescan) is "Approve and send": the
    prescription check, the dispatch row and the move together (portal.dispatch.services)."""
    return to is Status.SENT and case.status in {Status.DRAFT, Status.RESCAN}


def move_case(case: LabCase, to: str, actor: Actor, reason: str = "", detail: dict | None = None) -> None:
    """Any move but a send. A cancellation is published (CaseCancelled): the lab's links stop
    working and the lab is told by its channel (portal.labcomm)."""
    target = status_of(to, case)
    if is_send(case, target):
        raise IllegalMove(f"Use Approve and send to send {case.number}: it checks the prescription first.")
    lifecycle.move(case, target, actor=actor, reason=reason, detail=detail)
    if target is Status.CANCELLED:
        events.publish(CaseCancelled(case, actor))


def check_in(case: LabCase, actor: Actor, quality_checked: bool, note: str = "") -> None:
    """The work has arrived at the practice. Work from a lab that never said it shipped is
    recorded as dispatched first, so the history stays true."""
    if case.status in {Status.SENT, Status.ACKNOWLEDGED, Status.IN_PRODUCTION}:
        lifecycle.move(case, Status.DISPATCHED, actor=actor, detail={"note": "recorded at check-in"})
    lifecycle.move(case, Status.RECEIVED, actor=actor,
                   detail={"quality_checked": "yes" if quality_checked else "no", "note": note})
    case.quality_checked = quality_checked
    case.quality_note = note


def remake(case: LabCase, actor: Actor, reason: str, payer: str, notes: str) -> LabCase:
    """A new draft case linked to the original, with the same prescription, a reason and a payer."""
    if case.status not in {Status.DISPATCHED, Status.RECEIVED, Status.FITTED}:
        raise IllegalMove(f"A remake is for work that came back; {case.number} is {case.status.label}.")
    new = LabCase(
        practice_id=case.practice_id, number=next_case_number(dt.date.today().year), status=Status.DRAFT,
        patient_id=case.patient_id, provider_id=case.provider_id, lab_id=case.lab_id,
        seat_appointment_id=None, remake_of_id=case.id, remake_reason=reason, remake_payer=payer,
        instructions=f"REMAKE of {case.number} ({reason}, paid by {payer}): {notes}\n\n{case.instructions}".strip(),
        origin=case.origin, origin_order_id=case.origin_order_id, stage=case.stage,
        fee=Decimal("0") if payer == "lab" else case.fee,
    )
    new.items = [
        CaseItem(position=i.position, teeth=i.teeth, restoration=i.restoration, material=i.material,
                 shade=i.shade, margin=i.margin, notes=i.notes)
        for i in case.items
    ]
    db.session.add(new)
    db.session.flush()
    new.due_date = compute_due_date(case.practice_id, case.lab, new.items)
    refresh_risk(new)
    record("case.remake", "lab_case", new.id, after={"remake_of": case.number, "reason": reason,
           "payer": payer, "notes": notes}, actor=actor, practice_id=case.practice_id)
    record("case.remade", "lab_case", case.id, after={"remake": new.number, "reason": reason, "payer": payer},
           actor=actor, practice_id=case.practice_id)
    return new


def find_by_number(practice_id: int, text: str) -> LabCase | None:
    text = text.strip().upper()
    if not text:
        return None
    return db.session.scalar(
        select(LabCase).where(LabCase.practice_id == practice_id, func.upper(LabCase.number) == text)
    )


def refresh_cases_for_appointment(appointment_id: int) -> None:
    """An appointment moved: the seat risk of its cases may have changed."""
    for case in db.session.scalars(select(LabCase).where(LabCase.seat_appointment_id == appointment_id)):
        db.session.expire(case, ["seat_appointment"])
        refresh_risk(case)


# What the timeline shows of the case's writes to its PMS (portal/integrations/writeback.py): each
# outcome, in words ({pms} is the PMS's name), not the "queued" row every move leaves.
PMS_WRITE_LABELS = {
    "pms_lab_case.created": "lab case created in {pms}",
    "pms_lab_case.found": "lab case found in {pms} (an earlier write had made it)",
    "pms_lab_case.written": "written to {pms}",
    "pms_lab_case.retry_scheduled": "{pms} write to be retried",
    "pms_lab_case.failed": "{pms} write failed",
    "pms_lab_case.retry": "{pms} write retried",
    "pms_lab_case.not_needed": "nothing to write to {pms}",
}


def pms_write_labels(pms_name: str) -> dict[str, str]:
    return {action: text.format(pms=pms_name) for action, text in PMS_WRITE_LABELS.items()}


def timeline(case: LabCase):
    """The case's own audit rows, those of the scans on it (received, updated by the vendor...)
    and the outcomes of its writes to the practice's PMS."""
    scan_ids = [str(i) for i in db.session.scalars(select(Scan.id).where(Scan.case_id == case.id))]
    pms_ids = [str(i) for i in db.session.scalars(select(PmsLabCase.id).where(PmsLabCase.case_id == case.id))]
    of_case = (AuditEvent.entity_type == "lab_case") & (AuditEvent.entity_id == str(case.id))
    if scan_ids:
        of_case = or_(of_case, (AuditEvent.entity_type == "scan") & AuditEvent.entity_id.in_(scan_ids))
    if pms_ids:
        of_case = or_(of_case, (AuditEvent.entity_type == "pms_lab_case") & AuditEvent.entity_id.in_(pms_ids)
                      & AuditEvent.action.in_(list(PMS_WRITE_LABELS)))
    return db.session.scalars(select(AuditEvent).where(of_case).order_by(AuditEvent.seq.desc())).all()


def patient_options(practice_id: int, query: str, selected_id: int | None, limit: int = 10) -> list[Patient]:
    """Patients to choose from on the case form: the one already chosen first, then matches for
    `query` (name or chart number), or the most recently added when nothing is typed."""
    stmt = select(Patient).where(Patient.practice_id == practice_id)
    query = query.strip().lower()
    if query:
        like = f"%{query}%"
        stmt = stmt.where(or_(func.lower(Patient.last_name + ", " + Patient.first_name).like(like),
                              func.lower(Patient.first_name + " " + Patient.last_name).like(like),
                              func.lower(Patient.chart_number) == query))
        stmt = stmt.order_by(Patient.last_name, Patient.first_name)
    else:
        stmt = stmt.order_by(Patient.id.desc())
    found = list(db.session.scalars(stmt.limit(limit)))
    if selected_id and all(p.id != selected_id for p in found):
        chosen = db.session.get(Patient, selected_id)
        if chosen is not None and chosen.practice_id == practice_id:
            found.insert(0, chosen)
    return found
