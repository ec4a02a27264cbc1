"""Lab cases back out to the practice's PMS: when a case is sent, received (checked in), fitted,
cancelled or its due date changes, its lab case in the PMS is created or brought up to date. A
cancelled case is written only when the PMS already has (or was asked for) its lab case: Open
Dental's lab case has no status, so the cancellation reaches it as the instructions' first words
("CANCELLED in Lab Manager on ...: <reason>"), and the dates stay as they were.

The change's own transaction arms the case's outbox row (`PmsLabCase`, one per case and
integration): pending, with the job relayed to RQ after the commit (portal/queue.py). The job
claims the row with a lease, reads the case as it is then, and writes it through the PMS adapter
(`create_lab_case` the first time, then `update_lab_case` with the four dates, the instructions,
fee and invoice number), and finishes it with the dispatch outbox's own pieces
(portal/dispatch/services.py `finish` and `retry_delay`: the retry schedule of portal/retries.py,
never sooner than a Retry-After), writing an audit row for each outcome. A change while a write is
under way marks the row `again`: one more write follows the one in flight.

The PMS's create has no idempotency key, so an attempt after one whose outcome we did not hear
(a lost answer, a worker that died) first reads the patient's lab cases and looks for the marker
our create put in the instructions (`[Lab Manager <case number>]`): found, that lab case is the
one, and nothing is created twice. The key of the lab case is stored as soon as the create
answers, before the update.

A refusal (4xx) fails the row: the case page shows why, with Retry. A 401 also pauses the
integration (portal/integrations/outcomes.py `failed`), as a sync would.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import bindparam, case as sql_case, func, literal, select, update

from portal import events
from portal import retries
from portal.audit.actor import Actor
from portal.audit.record import record
from portal.cases.events import CaseEdited, CaseMoved
from portal.cases.models import LabCase
from portal.cases.status import Status
from portal.clock import utcnow
from portal.dispatch import services as outbox
from portal.dispatch.models import DispatchState
from portal.extensions import db
from portal.integrations import outcomes
from portal.integrations.http import VendorError
from portal.integrations.models import PmsLabCase, PmsLaboratory, ScannerIntegration
from portal.integrations.vendor import PMS_VENDORS
from portal.queue import PMS_WRITE

ENTITY = "pms_lab_case"
ACTOR = PMS_WRITE.func
WRITES_ON = {Status.SENT: "sent", Status.RECEIVED: "received", Status.FITTED: "fitted"}


class NotWritable(Exception):
    """The case can't be written to the PMS as it stands (a message for the case page)."""


# -- arming the outbox, in the change's transaction ----------------------------------------------------

def register(app) -> None:
    events.subscribe(app, CaseMoved, on_moved)
    events.subscribe(app, CaseEdited, on_edited)


def pms_of(practice_id: int) -> ScannerIntegration | None:
    return db.session.scalar(select(ScannerIntegration).where(
        ScannerIntegration.practice_id == practice_id, ScannerIntegration.vendor.in_(PMS_VENDORS),
        ScannerIntegration.active.is_(True)).order_by(ScannerIntegration.id).limit(1))


def on_moved(event: CaseMoved) -> None:
    reason = WRITES_ON.get(event.case.status)
    if reason:
        arm(event.case, reason, event.actor)
    elif event.case.status is Status.CANCELLED:
        arm(event.case, "cancelled", event.actor, only_if_known=True)


def on_edited(event: CaseEdited) -> None:
    if "due_date" in event.changed and event.case.sent_at is not None:
        arm(event.case, "due_date", event.actor)


def arm(case: LabCase, reason: str, actor: Actor | None = None, only_if_known: bool = False,
        integration: ScannerIntegration | None = None) -> PmsLabCase | None:
    """Ask for a write of `case` to its practice's PMS after the commit (None: it has none, or
    `only_if_known` and the PMS was never asked for this case's lab case). `integration`: the
    practice's PMS when the caller holds it already."""
    integration = integration or pms_of(case.practice_id)
    if integration is None:
        return None
    row = db.session.scalar(select(PmsLabCase).where(PmsLabCase.integration_id == integration.id,
                                                     PmsLabCase.case_id == case.id))
    if row is None and only_if_known:
        return None
    if row is None:
        row = PmsLabCase(integration_id=integration.id, case_id=case.id, practice_id=case.practice_id,
                         state=DispatchState.PENDING, attempts=0, max_attempts=retries.attempts(),
                         next_attempt_at=utcnow(), last_reason=reason)
        db.session.add(row)
        db.session.flush()
        record("pms_lab_case.queued", ENTITY, row.id, after={"case": case.number, "reason": reason, "state": "pending"},
               actor=actor, practice_id=case.practice_id)
    else:
        # One statement, so a write finishing meanwhile can't miss it: a row being written is
        # marked `again`; any other becomes pending, with a new round of attempts.
        sending = PmsLabCase.state == literal(DispatchState.SENDING, PmsLabCase.state.type)
        attempts = db.session.execute(
            update(PmsLabCase).where(PmsLabCase.id == row.id)
            .values(again=sql_case((sending, True), else_=PmsLabCase.again),
                    state=sql_case((sending, PmsLabCase.state),
                                   else_=literal(DispatchState.PENDING, PmsLabCase.state.type)),
                    next_attempt_at=sql_case((sending, PmsLabCase.next_attempt_at), else_=utcnow()),
                    max_attempts=sql_case((sending, PmsLabCase.max_attempts),
                                          else_=PmsLabCase.attempts + retries.attempts()),
                    last_reason=reason)
            .returning(PmsLabCase.attempts).execution_options(synchronize_session=False)).scalar_one()
        db.session.expire(row)
        record("pms_lab_case.queued", ENTITY, row.id, after={"case": case.number, "reason": reason},
               actor=actor, practice_id=case.practice_id)
        enqueue(row.id, attempts)
        return row
    enqueue(row.id, 0)
    return row


def _unwritten(integration: ScannerIntegration):
    """The practice's cases in the lab's hands or back (sent, not fitted or cancelled) that the PMS
    was never asked for: sent before it was connected, or while it was paused."""
    asked = select(PmsLabCase.id).where(PmsLabCase.integration_id == integration.id, PmsLabCase.case_id == LabCase.id)
    return (select(LabCase).where(LabCase.practice_id == integration.practice_id, LabCase.sent_at.is_not(None),
                                  LabCase.status.not_in((Status.FITTED, Status.CANCELLED)), ~asked.exists())
            .order_by(LabCase.id))


def unwritten_count(integration: ScannerIntegration) -> int:
    return db.session.scalar(select(func.count()).select_from(_unwritten(integration).subquery()))


def write_open_cases(integration: ScannerIntegration, actor: Actor, limit: int = 500) -> int:
    """An admin's "write them": each open case the PMS has no lab case for is armed as if it had just
    been sent (at most `limit` at a time; the page says how many are left)."""
    cases = list(db.session.scalars(_unwritten(integration).limit(limit)))
    for case in cases:
        arm(case, "connected", actor, integration=integration)
    record("pms.open_cases_queued", "scanner_integration", integration.id, after={"cases": len(cases)},
           actor=actor, practice_id=integration.practice_id)
    return len(cases)


def enqueue(row_id: int, attempts: int) -> None:
    from portal.queue import enqueue_after_commit

    enqueue_after_commit(PMS_WRITE, row_id, job_id=f"pms-labcase-{row_id}-{attempts + 1}")


# -- the job -----------------------------------------------------------------------------------------

_CLAIM = (
    update(PmsLabCase)
    .where(PmsLabCase.id == bindparam("row_id"),
           (PmsLabCase.state == DispatchState.PENDING)
           | ((PmsLabCase.state == DispatchState.SENDING) & (PmsLabCase.next_attempt_at <= bindparam("now"))))
    .values(state=DispatchState.SENDING, attempts=PmsLabCase.attempts + 1, again=False,
            next_attempt_at=bindparam("lease_until", type_=PmsLabCase.next_attempt_at.type))
    .returning(PmsLabCase)
)


def claim(row_id: int) -> PmsLabCase | None:
    from portal.queue import scanner_job_timeout
    from flask import current_app

    now = utcnow()
    lease = now + dt.timedelta(seconds=scanner_job_timeout(current_app.config) + 1)
    return db.session.scalars(_CLAIM, {"row_id": row_id, "now": now, "lease_until": lease},
                              execution_options={"populate_existing": True,
                                                 "synchronize_session": False}).one_or_none()


def bodies(case: LabCase, integration: ScannerIntegration) -> tuple[str, dict, dict]:
    """(the patient's PMS key, the create body, the update body), or NotWritable saying what is missing."""
    from portal.integrations.opendental import wire

    label = integration.vendor.label
    patient, provider = case.patient, case.provider
    if not patient.external_id:
        raise NotWritable(f"{patient.full_name} is not a patient {label} sent us (no PatNum); link the patient "
                          "first (a sync, or a CSV import of the PMS's export).")
    if provider is None or not provider.external_id:
        raise NotWritable(f"The case's provider is not one {label} sent us (no ProvNum).")
    laboratory = db.session.scalar(select(PmsLaboratory).where(
        PmsLaboratory.integration_id == integration.id, PmsLaboratory.lab_id == case.lab_id)) if case.lab_id else None
    if laboratory is None:
        raise NotWritable(f"{case.lab.name if case.lab else 'The case’s lab'} is not linked to one of {label}'s "
                          "laboratories: link it under Settings → Integrations, then Retry.")
    summary = "; ".join(f"{i.restoration} {i.teeth} {i.material} {i.shade}".strip() for i in case.items)
    cancelled = ""
    if case.status is Status.CANCELLED:
        when = case.updated_at or utcnow()
        cancelled = f"CANCELLED in Lab Manager on {when:%d %b %Y}" + (
            f": {case.status_reason}. " if case.status_reason else ". ")
    instructions = f"{wire.marker(case.number)} {cancelled}{summary}. {case.instructions}".strip()[:4000]
    appointment = case.seat_appointment.external_id if case.seat_appointment is not None else ""
    create = wire.lab_case_create(patient_ref=patient.external_id, laboratory_ref=laboratory.ref,
                                  provider_ref=provider.external_id, appointment_ref=appointment or "",
                                  due=case.due_date, instructions=instructions, fee=case.fee,
                                  invoice=case.invoice_number)
    checked = case.received_at if case.quality_checked else None
    change = wire.lab_case_update(sent=case.sent_at, received=case.received_at, checked=checked, due=case.due_date,
                                  instructions=instructions, fee=case.fee, invoice=case.invoice_number)
    return patient.external_id, create, change


def deliver(row_id: int) -> str:
    """One write of a case to its PMS; the caller owns the app context."""
    from portal.integrations.opendental import wire
    from portal.integrations.registry import adapter_for

    row = claim(row_id)
    if row is None:
        db.session.rollback()
        return "nothing to do"
    actor = Actor.job(ACTOR)
    case = db.session.get(LabCase, row.case_id)
    integration = db.session.get(ScannerIntegration, row.integration_id)
    if not integration.active:
        return _failed(row, "The PMS integration is paused; resume it, then Retry.", None, actor)
    try:
        patient_ref, create, change = bodies(case, integration)
    except NotWritable as exc:
        return _failed(row, str(exc), None, actor)
    ref, attempt, number, case_status = row.ref, row.attempts, case.number, case.status
    adapter = adapter_for(integration)
    db.session.commit()  # the claim holds the row; nothing of ours is open while the PMS is called
    try:
        if not ref and attempt > 1:
            # an earlier attempt may have created it without our hearing: find it before creating
            found = wire.marked_case(adapter.lab_cases(patient_ref), number)
            if found is not None:
                ref = str(found["LabCaseNum"])
                _keep_ref(row_id, ref, number, "found", actor)
        if not ref and case_status is Status.CANCELLED:
            db.session.rollback()
            return _nothing_to_cancel(row_id, number, actor)
        if not ref:
            ref = str(adapter.create_lab_case(create)["LabCaseNum"])
            _keep_ref(row_id, ref, number, "created", actor)
        adapter.update_lab_case(ref, change)
    except VendorError as exc:
        db.session.rollback()
        row = db.session.get(PmsLabCase, row_id)
        if exc.kind == "auth":
            outcomes.failed(db.session.get(ScannerIntegration, row.integration_id), exc, actor)
        if exc.transient:
            return _transient(row, str(exc), exc.status_code, exc.retry_after, actor)
        return _failed(row, str(exc), exc.status_code, actor)
    row = db.session.get(PmsLabCase, row_id)
    again = row.again
    state = DispatchState.PENDING if again else DispatchState.DELIVERED
    if not outbox.finish(row, state=state, delivered_at=utcnow(), last_error="", last_status_code=200,
                         next_attempt_at=utcnow() if again else None, again=False):
        db.session.rollback()
        return "superseded"
    record("pms_lab_case.written", ENTITY, row_id, before={"state": "sending"},
           after={"state": "delivered", "case": number, "lab_case": ref, "attempt": attempt,
                  "again": again}, actor=actor, practice_id=case.practice_id)
    if again:
        enqueue(row_id, attempt)
    db.session.commit()
    return "written"


def _nothing_to_cancel(row_id: int, number: str, actor: Actor) -> str:
    """The case was cancelled before the PMS ever had its lab case: there is nothing to create."""
    row = db.session.get(PmsLabCase, row_id)
    if not outbox.finish(row, state=DispatchState.DELIVERED, delivered_at=utcnow(), last_error="",
                         last_status_code=None, next_attempt_at=None, again=False):
        db.session.rollback()
        return "superseded"
    record("pms_lab_case.not_needed", ENTITY, row_id, before={"state": "sending"},
           after={"state": "delivered", "case": number,
                  "reason": "Cancelled before the PMS had its lab case: nothing was created there."},
           actor=actor, practice_id=row.practice_id)
    db.session.commit()
    return "not needed"


def _keep_ref(row_id: int, ref: str, number: str, how: str, actor: Actor) -> None:
    """The PMS's key of the lab case, stored as soon as it is known (before the update is sent)."""
    row = db.session.get(PmsLabCase, row_id)
    row.ref = ref[:40]
    record(f"pms_lab_case.{how}", ENTITY, row_id, after={"case": number, "lab_case": ref}, actor=actor,
           practice_id=row.practice_id)
    db.session.commit()


def _transient(row: PmsLabCase, error: str, status: int | None, retry_after: float | None, actor: Actor) -> str:
    from portal.queue import schedule

    delay = outbox.retry_delay(row, retry_after)
    if delay is None:
        return _failed(row, f"{error} (gave up after {row.attempts} attempts)", status, actor)
    row_id, attempt, practice_id = row.id, row.attempts, row.practice_id
    if not outbox.finish(row, state=DispatchState.PENDING, last_error=error[:500], last_status_code=status,
                         next_attempt_at=utcnow() + dt.timedelta(seconds=delay)):
        db.session.rollback()
        return "superseded"
    record("pms_lab_case.retry_scheduled", ENTITY, row_id, before={"state": "sending"},
           after={"state": "pending", "attempt": attempt, "error": error[:300], "retry_in_seconds": round(delay, 1)},
           actor=actor, practice_id=practice_id)
    db.session.commit()
    schedule(PMS_WRITE, row_id, job_id=f"pms-labcase-{row_id}-{attempt + 1}", delay=delay)
    return "retry"


def _failed(row: PmsLabCase, error: str, status: int | None, actor: Actor) -> str:
    row_id, attempt, practice_id = row.id, row.attempts, row.practice_id
    if not outbox.finish(row, state=DispatchState.FAILED, last_error=error[:500], last_status_code=status,
                         next_attempt_at=None):
        db.session.rollback()
        return "superseded"
    record("pms_lab_case.failed", ENTITY, row_id, before={"state": "sending"},
           after={"state": "failed", "attempt": attempt, "error": error[:500], "status_code": status},
           actor=actor, practice_id=practice_id, outcome="error")
    db.session.commit()
    return "failed"


def retry(row: PmsLabCase, actor: Actor) -> None:
    """A person's Retry of a failed write: a new round of attempts."""
    from portal.cases.lifecycle import IllegalMove

    if row.state is not DispatchState.FAILED:
        raise IllegalMove(f"This write is {row.state.label.lower()}; only a failed one can be retried.")
    before = {"state": row.state.value, "attempts": row.attempts}
    row.state, row.next_attempt_at = DispatchState.PENDING, utcnow()
    row.max_attempts = row.attempts + retries.attempts()
    record("pms_lab_case.retry", ENTITY, row.id, before=before, after={"state": "pending"}, actor=actor,
           practice_id=row.practice_id)
    enqueue(row.id, row.attempts)


def sweep(now: dt.datetime | None = None) -> int:
    """Re-enqueue every due write that has no live job (a lost job, a lease run out)."""
    from portal.queue import enqueue_now, get_queue

    now = now or utcnow()
    queue, handed = get_queue(), 0
    for row in db.session.scalars(select(PmsLabCase).where(
            PmsLabCase.state.in_((DispatchState.PENDING, DispatchState.SENDING)),
            PmsLabCase.next_attempt_at <= now).limit(500)):
        handed += enqueue_now(queue, PMS_WRITE, row.id, job_id=row.job_id)
    return handed


def case_row(case: LabCase) -> PmsLabCase | None:
    """The case's newest lab case row in the PMS, for the case page's PMS panel (None: no PMS)."""
    return db.session.scalar(select(PmsLabCase).where(PmsLabCase.case_id == case.id).order_by(PmsLabCase.id.desc())
                             .limit(1))
