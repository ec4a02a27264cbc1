"""An Rx from a case to the scanner, withdrawing it, and asking for a rescan (iTero's Scan Request,
Delete Rx and Return to doctor; docs/vendors/itero.md).

Outbox style, as sending work to labs (portal/dispatch): a person's click writes the row and its
audit row in the request's transaction, and the job that calls the vendor is enqueued after the
commit with a deterministic id (jobs/itero.py). The job claims the row (a state guard and an attempt
counter, committed before the call), calls the vendor, and records the outcome with an audit row of
its own. A row still pending after a lost job (Redis away, a killed worker) is enqueued again by the
sweep. The scan that comes back with the Rx id joins the case (services._case_of_rx).

Services flush; the request or job commits.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from flask import current_app
from sqlalchemy import or_, select, update

from portal.audit.actor import Actor
from portal.audit.record import record
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.extensions import db
from portal.integrations.http import VendorError
from portal.integrations.itero.models import RescanRequest, RescanState, RxState, ScanRequest
from portal.integrations.models import ScannerIntegration
from portal.integrations.registry import adapter_for
from portal.integrations.vendor import OrderStage, Vendor
from portal.practices.models import utcnow
from portal.queue import RETURN_TO_DOCTOR, SEND_RX, WITHDRAW_RX, enqueue_after_commit, enqueue_now, get_queue, scanner_job_timeout
from portal.scans.models import Scan

LIVE = frozenset({RxState.PENDING, RxState.CREATED, RxState.DELETE_PENDING})
WAITING_FOR_SCAN = frozenset({Status.DRAFT, Status.RESCAN})
MAX_ATTEMPTS = 5


class RxError(ValueError):
    """A request about an Rx that can't be done; str(exc) is for the person who asked."""


def job_timeout() -> int:
    """Longer than one attempt's calls added up (portal/queue.py scanner_job_timeout)."""
    return scanner_job_timeout(current_app.config)


def lease() -> dt.timedelta:
    """How long an attempt holds its row; after that the sweep may start another."""
    return dt.timedelta(seconds=job_timeout() + 10)


# -- reading ------------------------------------------------------------------------------------------

def itero_integration(practice_id: int, lab_id: int | None = None) -> ScannerIntegration | None:
    """The practice's active, connected iTero integration (the one that may send to the case's lab
    when there are several)."""
    found = list(db.session.scalars(select(ScannerIntegration).where(
        ScannerIntegration.practice_id == practice_id, ScannerIntegration.vendor == Vendor.ITERO,
        ScannerIntegration.active.is_(True), ScannerIntegration.connected_at.is_not(None),
    ).order_by(ScannerIntegration.id)))
    for integration in found:
        if lab_id is not None and any(lab.id == lab_id for lab in integration.labs):
            return integration
    return found[0] if found else None


def requests_of(case_id: int) -> list[ScanRequest]:
    return list(db.session.scalars(select(ScanRequest).where(ScanRequest.case_id == case_id)
                                   .order_by(ScanRequest.id.desc())))


def rescans_of(case_id: int) -> list[RescanRequest]:
    return list(db.session.scalars(select(RescanRequest).where(RescanRequest.case_id == case_id)
                                   .order_by(RescanRequest.id.desc())))


def itero_scan_of(case: LabCase) -> Scan | None:
    return db.session.scalar(select(Scan).where(
        Scan.case_id == case.id, Scan.vendor == Vendor.ITERO, Scan.integration_id.is_not(None),
    ).order_by(Scan.id.desc()).limit(1))


@dataclass
class Panel:
    """What the case page's iTero panel shows and offers."""

    integration: ScannerIntegration | None
    requests: list[ScanRequest] = field(default_factory=list)
    rescans: list[RescanRequest] = field(default_factory=list)
    scan: Scan | None = None
    can_send: bool = False
    send_problem: str = ""
    can_ask_rescan: bool = False

    def can_withdraw(self, request: ScanRequest) -> bool:
        return request.state is RxState.CREATED


def panel(case: LabCase) -> Panel | None:
    """None when there is nothing to show or do: no Rx or rescan asked, and none to ask for now."""
    integration = itero_integration(case.practice_id, case.lab_id)
    requests, rescans, scan = requests_of(case.id), rescans_of(case.id), itero_scan_of(case)
    if integration is None and not requests and not rescans:
        return None
    out = Panel(integration, requests, rescans, scan)
    if integration is not None and case.status in WAITING_FOR_SCAN and scan is None \
            and not any(r.state in LIVE for r in requests):
        out.can_send = True
        out.send_problem = rx_problem(case, integration)
    if case.status is Status.RESCAN and scan is not None and _usable(scan.integration) \
            and not rescan_asked(scan, rescans):
        out.can_ask_rescan = True
    if not (requests or rescans or out.can_send or out.can_ask_rescan):
        return None  # nothing to show or do: no empty heading on the case page
    return out


def rescan_asked(scan: Scan, rescans: list[RescanRequest]) -> str:
    """Why asking iTero for a rescan of `scan` again makes no sense now, or ""."""
    if scan.stage is OrderStage.RESCAN:
        return "iTero has sent this scan back to the doctor already; the rescan will come to this case."
    for r in rescans:
        if r.scan_id != scan.id:
            continue
        if r.state is RescanState.PENDING:
            return "iTero is being asked already; wait for the answer."
        if r.state is RescanState.SENT and r.updated_at >= scan.updated_at:
            return "iTero has sent this scan back to the doctor; the rescan will come to this case."
    return ""


def _usable(integration: ScannerIntegration | None) -> bool:
    return integration is not None and integration.active and integration.connected


# -- matching the doctor --------------------------------------------------------------------------------

def _doctor_name(text: str) -> str:
    return " ".join(re.sub(r"^\s*dr\.?\s+", "", text or "", flags=re.IGNORECASE).split()).casefold()


def match_doctor(provider_name: str, doctors) -> tuple[str | None, str]:
    """(iTero's doctor id for the case's provider, "") or (None, why not). Names are compared without
    a "Dr." and without case or extra spaces."""
    wanted = _doctor_name(provider_name)
    known = [(str(d_id), name) for d_id, name in doctors]
    found = [d_id for d_id, name in known if _doctor_name(name) == wanted]
    if len(found) == 1:
        return found[0], ""
    names = ", ".join(name for _, name in known) or "none"
    if not found:
        return None, (f"iTero knows no doctor called “{provider_name}” (its doctors: {names}). Correct the "
                      "provider's name or add the doctor in iTero, then send the Rx again.")
    return None, f"iTero has {len(found)} doctors called “{provider_name}”; send the Rx from the scanner."


def rx_problem(case: LabCase, integration: ScannerIntegration) -> str:
    """Why an Rx of this case can't go to iTero now, or "" (the doctors known from the last pairing
    or connection test; the job asks iTero again)."""
    if case.provider is None:
        return "Choose the case's provider first: the Rx goes to that doctor's scanner."
    if not case.items:
        return "The case has no prescription items."
    doctors = integration.config.get("doctors")
    if isinstance(doctors, list) and doctors:
        _, problem = match_doctor(case.provider.name, doctors)
        return problem
    return ""


# -- a person asks ---------------------------------------------------------------------------------------

def request_rx(case: LabCase, actor: Actor) -> ScanRequest:
    """Send the case's Rx to the practice's iTero scanner (after the commit)."""

    integration = itero_integration(case.practice_id, case.lab_id)
    if integration is None:
        raise RxError("The practice has no connected iTero integration; connect one in Settings → Integrations.")
    if case.status not in WAITING_FOR_SCAN:
        raise RxError(f"{case.number} is {case.status.label}; an Rx goes to the scanner for a draft or a case "
                      "returned for rescan.")
    live = next((r for r in requests_of(case.id) if r.state in LIVE), None)
    if live is not None:
        raise RxError(f"An Rx of {case.number} is already at iTero ({live.state.label.lower()}).")
    if itero_scan_of(case) is not None:
        raise RxError(f"{case.number} has an iTero scan already; ask for a rescan instead.")
    problem = rx_problem(case, integration)
    if problem:
        raise RxError(problem)
    row = ScanRequest(practice_id=case.practice_id, case_id=case.id, integration_id=integration.id,
                      state=RxState.PENDING, attempts=0,
                      requested_by_id=int(actor.id) if actor.kind == "user" and actor.id else None)
    db.session.add(row)
    db.session.flush()
    record("scanner.rx_requested", "lab_case", case.id, after={
        "scan_request_id": row.id, "integration": integration.name, "state": row.state.value,
        "provider": case.provider.name}, actor=actor, practice_id=case.practice_id)
    enqueue_after_commit(SEND_RX, row.id, job_id=f"scan-request-{row.id}-send")
    return row


def withdraw_rx(request: ScanRequest, actor: Actor) -> None:
    """Withdraw an Rx that waits for its scan (iTero's Delete Rx, after the commit)."""

    if request.state is RxState.FAILED:
        _set(request, RxState.DELETED, "", "scanner.rx_withdrawn", actor, note="never reached iTero")
        return
    if request.state is RxState.PENDING:
        raise RxError("The Rx is still being sent to iTero; withdraw it once it is there.")
    if request.state is not RxState.CREATED:
        raise RxError(f"This Rx is {request.state.label.lower()}; only an Rx waiting for its scan can be "
                      "withdrawn.")
    request.attempts = 0
    _set(request, RxState.DELETE_PENDING, "", "scanner.rx_withdraw_requested", actor)
    enqueue_after_commit(WITHDRAW_RX, request.id, job_id=f"scan-request-{request.id}-withdraw")


def ask_rescan(case: LabCase, reason: str, actor: Actor) -> RescanRequest:
    """Ask iTero to send the case's scan back to the doctor for a rescan (after the commit)."""

    reason = " ".join((reason or "").split())
    if case.status is not Status.RESCAN:
        raise RxError(f"{case.number} is {case.status.label}; return it for a rescan first.")
    if not reason:
        raise RxError("Say what the doctor should rescan.")
    if len(reason) > 500:
        raise RxError("Keep the reason under 500 characters.")
    scan = itero_scan_of(case)
    if scan is None:
        raise RxError(f"{case.number} has no scan from iTero to send back.")
    if not _usable(scan.integration):
        raise RxError("The iTero integration this scan came through is paused or not connected.")
    if problem := rescan_asked(scan, rescans_of(case.id)):
        raise RxError(problem)
    row = RescanRequest(practice_id=case.practice_id, case_id=case.id, scan_id=scan.id,
                        integration_id=scan.integration_id, order_id=scan.order_id, reason=reason,
                        state=RescanState.PENDING, attempts=0,
                        requested_by_id=int(actor.id) if actor.kind == "user" and actor.id else None)
    db.session.add(row)
    db.session.flush()
    record("scanner.return_to_doctor_requested", "lab_case", case.id, after={
        "rescan_request_id": row.id, "order_id": scan.order_id, "reason": reason, "state": row.state.value},
        actor=actor, practice_id=case.practice_id)
    enqueue_after_commit(RETURN_TO_DOCTOR, row.id, job_id=f"rescan-request-{row.id}")
    return row


def _set(request: ScanRequest, state: RxState, error: str, action: str, actor: Actor, note: str = "") -> None:
    before = {"state": request.state.value, "rx_id": request.rx_id}
    request.state, request.last_error, request.updated_at = state, error[:300], utcnow()
    after = {"scan_request_id": request.id, "state": state.value, "rx_id": request.rx_id}
    if error:
        after["error"] = error[:300]
    if note:
        after["note"] = note
    record(action, "lab_case", request.case_id, before=before, after=after, actor=actor,
           practice_id=request.practice_id, outcome="error" if error else "ok")


# -- the jobs ----------------------------------------------------------------------------------------------

def _claim(model, row_id: int, state) -> bool:
    """Take one attempt at the row: it is in `state`, and either never tried or its last attempt is
    older than the lease. Committed at once, before the vendor is called."""
    row = db.session.get(model, row_id)
    if row is None or row.state is not state:
        db.session.rollback()
        return False
    now = utcnow()
    if row.attempts and row.updated_at > now - lease():
        db.session.rollback()
        return False
    taken = db.session.execute(update(model).where(
        model.id == row_id, model.state == state, model.attempts == row.attempts,
    ).values(attempts=model.attempts + 1, updated_at=now)).rowcount
    db.session.commit()
    return taken == 1


def send(request_id: int, actor: Actor) -> str:
    """The job: create the Rx at iTero (the doctor matched by name in its practice configuration)."""
    if not _claim(ScanRequest, request_id, RxState.PENDING):
        return "nothing to do"
    request = db.session.get(ScanRequest, request_id)
    case = request.case
    if case.status is Status.CANCELLED:
        _set(request, RxState.FAILED, f"{case.number} was cancelled; the Rx was not sent.", "scanner.rx_failed",
             actor)
        db.session.commit()
        return "failed"
    if not _usable(request.integration):
        _set(request, RxState.FAILED, "The iTero integration is paused or not connected; the Rx was not sent.",
             "scanner.rx_failed", actor)
        db.session.commit()
        return "failed"
    if case.provider is None:
        _set(request, RxState.FAILED, "The case has no provider any more; choose one and send the Rx again.",
             "scanner.rx_failed", actor)
        db.session.commit()
        return "failed"
    adapter = adapter_for(request.integration)
    provider = case.provider.name
    try:
        doctor_id, problem = match_doctor(provider, adapter.practice_configuration().doctors)
        if doctor_id is not None:
            rx_id = adapter.create_rx(case, doctor_id)
    except VendorError as exc:
        db.session.rollback()
        return _failed_attempt(db.session.get(ScanRequest, request_id), exc, actor, RxState.FAILED,
                               "scanner.rx_failed")
    request = db.session.get(ScanRequest, request_id)
    if doctor_id is None:
        _set(request, RxState.FAILED, problem, "scanner.rx_failed", actor)
        db.session.commit()
        return "failed"
    request.rx_id = rx_id[:100]
    _set(request, RxState.CREATED, "", "scanner.rx_sent", actor)
    db.session.commit()
    return "created"


def withdraw(request_id: int, actor: Actor) -> str:
    """The job: delete the Rx at iTero. 409 (it has a scan) leaves it waiting, with the reason."""
    if not _claim(ScanRequest, request_id, RxState.DELETE_PENDING):
        return "nothing to do"
    request = db.session.get(ScanRequest, request_id)
    adapter = adapter_for(request.integration)
    rx_id = request.rx_id
    try:
        adapter.delete_rx(rx_id)
    except VendorError as exc:
        db.session.rollback()
        request = db.session.get(ScanRequest, request_id)
        if exc.status_code == 409:
            _set(request, RxState.CREATED, "iTero has a scan for this Rx already, so it can't be withdrawn; the "
                 "scan will come to this case.", "scanner.rx_withdraw_refused", actor)
            db.session.commit()
            return "refused"
        if exc.kind == "not_found":
            _set(request, RxState.DELETED, "", "scanner.rx_withdrawn", actor, note="iTero no longer knows this Rx")
            db.session.commit()
            return "withdrawn"
        return _failed_attempt(request, exc, actor, RxState.CREATED, "scanner.rx_withdraw_failed",
                               prefix="Withdrawing failed: ")
    request = db.session.get(ScanRequest, request_id)
    _set(request, RxState.DELETED, "", "scanner.rx_withdrawn", actor)
    db.session.commit()
    return "withdrawn"


def _failed_attempt(request: ScanRequest, exc: VendorError, actor: Actor, final: RxState, action: str,
                    prefix: str = "") -> str:
    """A transient error with attempts left keeps the row for the sweep; anything else is final."""
    message = f"{prefix}{exc}"
    if exc.transient and request.attempts < MAX_ATTEMPTS:
        request.last_error = message[:300]
        request.updated_at = utcnow()
        record("scanner.rx_attempt_failed", "lab_case", request.case_id, after={
            "scan_request_id": request.id, "attempt": request.attempts, "error": message[:300]},
            actor=actor, practice_id=request.practice_id, outcome="error")
        db.session.commit()
        return "retry"
    _set(request, final, message, action, actor)
    db.session.commit()
    return "failed"


def return_scan(rescan_id: int, actor: Actor) -> str:
    """The job: iTero's Return to doctor for the scan's order, with the reason."""
    if not _claim(RescanRequest, rescan_id, RescanState.PENDING):
        return "nothing to do"
    row = db.session.get(RescanRequest, rescan_id)
    if not _usable(row.integration):
        return _rescan_outcome(row, RescanState.FAILED, "The iTero integration is paused or not connected.", actor)
    adapter = adapter_for(row.integration)
    order_id, reason = row.order_id, row.reason
    try:
        adapter.return_to_doctor(order_id, reason)
    except VendorError as exc:
        db.session.rollback()
        row = db.session.get(RescanRequest, rescan_id)
        if exc.transient and row.attempts < MAX_ATTEMPTS:
            row.last_error, row.updated_at = str(exc)[:300], utcnow()
            record("scanner.return_to_doctor_attempt_failed", "lab_case", row.case_id, after={
                "rescan_request_id": row.id, "attempt": row.attempts, "error": str(exc)[:300]},
                actor=actor, practice_id=row.practice_id, outcome="error")
            db.session.commit()
            return "retry"
        return _rescan_outcome(row, RescanState.FAILED, str(exc), actor)
    return _rescan_outcome(db.session.get(RescanRequest, rescan_id), RescanState.SENT, "", actor)


def _rescan_outcome(row: RescanRequest, state: RescanState, error: str, actor: Actor) -> str:
    before = {"state": row.state.value}
    row.state, row.last_error, row.updated_at = state, error[:300], utcnow()
    after = {"rescan_request_id": row.id, "state": state.value, "order_id": row.order_id}
    if error:
        after["error"] = error[:300]
    record("scanner.returned_to_doctor" if state is RescanState.SENT else "scanner.return_to_doctor_failed", "lab_case",
           row.case_id, before=before, after=after, actor=actor, practice_id=row.practice_id,
           outcome="error" if error else "ok")
    db.session.commit()
    return state.value


# -- the sweep -------------------------------------------------------------------------------------------

def sweep() -> dict:
    """Enqueue the job of every Rx or rescan request still waiting whose last attempt (if any) is
    older than the lease: a job lost to a Redis outage or a killed worker is not lost work."""
    queue = get_queue()
    cutoff = utcnow() - lease()
    waiting = or_(ScanRequest.attempts == 0, ScanRequest.updated_at <= cutoff)
    count = 0
    for row_id, state in db.session.execute(select(ScanRequest.id, ScanRequest.state).where(
            ScanRequest.state.in_((RxState.PENDING, RxState.DELETE_PENDING)), waiting)):
        spec, suffix = (SEND_RX, "send") if state is RxState.PENDING else (WITHDRAW_RX, "withdraw")
        count += enqueue_now(queue, spec, row_id, job_id=f"scan-request-{row_id}-{suffix}")
    for (row_id,) in db.session.execute(select(RescanRequest.id).where(
            RescanRequest.state == RescanState.PENDING,
            or_(RescanRequest.attempts == 0, RescanRequest.updated_at <= cutoff))):
        count += enqueue_now(queue, RETURN_TO_DOCTOR, row_id, job_id=f"rescan-request-{row_id}")
    return {"requests": count}
