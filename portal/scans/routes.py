"""The scan inbox (/scans) and a scan's page.

Coordinators and admins act on scans, managers read. A row action answers an htmx request with the
row alone (and the top bar's count out of band), and a plain form post with a redirect back (or the
scan's page with the problem beside the control, 422). Another practice's scan is not found (404).
"""
from __future__ import annotations

import datetime as dt

from flask import (
    Blueprint,
    abort,
    flash,
    g,
    redirect,
    request,
    url_for,
)
from flask_login import current_user

from portal.audit.actor import Actor
from portal.cases.models import LabCase
from portal.cases.services import patient_options
from portal.extensions import db, transaction
from portal.integrations.vendor import Jaw, Vendor
from portal.people.models import Patient
from portal.scans import queries as inbox
from portal.scans import services
from portal.scans.forms import ActionForm, CaseChoiceForm, DismissForm, JawForm, PatientForm
from portal.scans.models import InboxState, Scan
from portal.scans.services import NeedsConfirmation, ScanError
from portal.web import ANY_ROLE, CAN_EDIT, get_or_404, render, requires, safe_next, wants_fragment

bp = Blueprint("scans", __name__, url_prefix="/scans")


@bp.app_context_processor
def _top_bar():
    """The top bar's count of scans that need a person, on every full page (base.html). Lazy:
    nothing is queried unless the template asks (the board's htmx poll never does). The case
    page's Scans panel gets its data from the case view instead (portal/cases/routes.py)."""

    def pending_scans() -> int:
        if g.get("practice") is None:
            return 0
        if "pending_scans" not in g:
            g.pending_scans = inbox.pending_count(g.practice.id)
        return g.pending_scans

    return {"pending_scans": pending_scans, "InboxState": InboxState}


# ==== the inbox ===================================================================================

def _tab() -> InboxState:
    try:
        return InboxState(request.args.get("tab", InboxState.PENDING.value))
    except ValueError:
        return InboxState.PENDING


def _vendor() -> Vendor | None:
    try:
        return Vendor(request.args["vendor"]) if request.args.get("vendor") else None
    except ValueError:
        return None


@bp.get("/")
@requires(*ANY_ROLE)
def index():
    tab, vendor = _tab(), _vendor()
    page = inbox.list_scans(g.practice.id, tab, vendor, request.args.get("page", 1, type=int) or 1)
    cases = inbox.open_cases(g.practice.id, [s.patient_id for s in page.scans
                                             if s.patient_id and s.case_id is None])
    return render("scanners/inbox.html", "inbox_body", tab=tab, vendor=vendor, page=page, open_cases=cases,
                  counts=inbox.counts(g.practice.id, vendor), vendors=Vendor.scanners(), here=request.full_path)


@bp.get("/<int:scan_id>")
@requires(*ANY_ROLE)
def show(scan_id: int):
    return _scan_page(get_or_404(Scan, scan_id))


def _scan_page(scan: Scan, *, code: int = 200, error: str = "", error_at: str = "",
               confirm: NeedsConfirmation | None = None):
    q = request.args.get("q", scan.patient_last_name)[:100]
    cases = inbox.open_cases(g.practice.id, [scan.patient_id]) if scan.patient_id else {}
    return render("scanners/scan.html", "scan_main", code=code, s=scan, q=q, history=_history(scan),
                  patients=_choices(scan, q, scan.patient_id) if _needs_patient(scan) else [], twins=_twins(scan),
                  cases=cases.get(scan.patient_id, []), events=inbox.scan_events(scan),
                  files=inbox.bite_partners(scan), error=error, error_at=error_at, confirm=confirm)


def _history(scan: Scan) -> list[tuple[str, dt.datetime | None]]:
    """The vendor's status history with its times read (stored as ISO text)."""
    found = []
    for entry in scan.history_list:
        try:
            at = dt.datetime.fromisoformat(entry["at"]) if entry.get("at") else None
        except (TypeError, ValueError):
            at = None
        found.append((str(entry.get("status", "")), at))
    return found


def _twins(scan: Scan) -> set[int]:
    """Ids of the patients with the scanner's name and birth date when more than one has them."""
    if scan.patient_id is not None:
        return set()
    found = services.same_name_and_birth(g.practice.id, services.scanner_ref(scan))
    return {p.id for p in found} if len(found) > 1 else set()


def _choices(scan: Scan, q: str, selected_id: int | None) -> list[Patient]:
    """The patients to match to: every one with the scanner's name and birth date first (when two
    or more have them), then those matching what was typed."""
    twins = _twins(scan)
    first = [db.session.get(Patient, i) for i in sorted(twins)]
    return first + [p for p in patient_options(g.practice.id, q, selected_id) if p.id not in twins]


def _needs_patient(scan: Scan) -> bool:
    return scan.case_id is None and scan.inbox is not InboxState.LINKED


@bp.get("/<int:scan_id>/patients")
@requires(*CAN_EDIT)
def patients(scan_id: int):
    """The match-patient choices for what was typed (htmx active search, and the row's menu)."""
    scan = get_or_404(Scan, scan_id)
    q = request.args.get("q", scan.patient_last_name)[:100]
    return render("scanners/_patient_options.html", s=scan, twins=_twins(scan), patients=_choices(scan, q, None))


def _row_response(scan: Scan, *, code: int = 200, note: str = "", error: str = "", error_at: str = "",
                  confirm: NeedsConfirmation | None = None):
    """The row for htmx (with the top bar's count out of band); otherwise back where the person
    was, or the scan's page with the problem beside the control. `confirm`: the question to ask
    before a match whose names or birth dates differ (the row, or the scan's page, shows both)."""
    if wants_fragment() and (request.htmx.target or "") == f"scan-{scan.id}":
        cases = inbox.open_cases(g.practice.id, [scan.patient_id]) if scan.patient_id else {}
        g.pop("pending_scans", None)
        return render("scanners/_row.html", code=code, s=scan, cases=cases.get(scan.patient_id, []), note=note,
                      error=error, error_at=error_at, tab=_tab(), oob_badge=True, confirm=confirm)
    if error or confirm is not None:
        return _scan_page(scan, code=code, error=error, error_at=error_at, confirm=confirm)
    if note:
        flash(note, "success")
    return redirect(safe_next(request.form.get("next"), url_for("scans.show", scan_id=scan.id)), 303)


def _scan_action(scan_id: int, form, at: str, act):
    """Load, check, validate, act, commit; `act(scan, form, actor)` returns the note for the person."""
    scan = get_or_404(Scan, scan_id)
    if not form.validate():
        message = next((e for errs in form.errors.values() for e in errs), "Check the form.")
        if "csrf_token" in form.errors:
            abort(400)
        return _row_response(scan, code=422, error=message, error_at=at)
    with transaction(NeedsConfirmation, ScanError) as outcome:
        note = act(scan, form, Actor.user(current_user))
    if isinstance(outcome.refused, NeedsConfirmation):  # nothing was changed; the person is asked first
        return _row_response(db.session.get(Scan, scan_id), confirm=outcome.refused)
    if outcome.refused:
        return _row_response(db.session.get(Scan, scan_id), code=422, error=str(outcome.refused), error_at=at)
    return _row_response(scan, note=note)


def _placed(scan: Scan, action: str) -> str:
    if scan.case_id is None:
        return scan.problem or "The scan waits for a case."
    verb = {"created": "is on a new draft case", "joined": "joined"}.get(action, "is on")
    return f"The scan {verb} {db.session.get(LabCase, scan.case_id).number}."


@bp.get("/<int:scan_id>/row")
@requires(*ANY_ROLE)
def row(scan_id: int):
    """The scan's inbox row as it is (htmx: "Cancel" on a confirmation); otherwise its page."""
    scan = get_or_404(Scan, scan_id)
    if not wants_fragment():
        return redirect(url_for("scans.show", scan_id=scan.id), 303)
    return _row_response(scan)


@bp.post("/<int:scan_id>/patient")
@requires(*CAN_EDIT)
def match(scan_id: int):
    def act(scan, form, actor):
        patient = db.session.get(Patient, form.patient_id.data)
        if patient is None or patient.practice_id != g.practice.id:
            raise ScanError("Choose the patient from the list.")
        result = services.assign_patient(scan, patient, actor, confirmed=form.confirm.confirmed)
        return f"Matched to {patient.first_name} {patient.last_name}. " + _placed(scan, result.case_action)

    return _scan_action(scan_id, PatientForm(), "patient", act)


@bp.post("/<int:scan_id>/case")
@requires(*CAN_EDIT)
def choose_case(scan_id: int):
    def act(scan, form, actor):
        case = db.session.get(LabCase, form.case_id.data)
        if case is None or case.practice_id != g.practice.id:
            raise ScanError("Choose one of the patient's open cases.")
        services.assign_case(scan, case, actor, confirmed=form.confirm.confirmed)
        return f"The scan is on {case.number}."

    return _scan_action(scan_id, CaseChoiceForm(), "case", act)


@bp.post("/<int:scan_id>/new-case")
@requires(*CAN_EDIT)
def new_case(scan_id: int):
    def act(scan, form, actor):
        case = services.new_case_for(scan, actor)
        return f"New draft case {case.number} created from the scan; check it and send it to the lab."

    return _scan_action(scan_id, ActionForm(), "case", act)


@bp.post("/<int:scan_id>/jaw")
@requires(*CAN_EDIT)
def set_jaw(scan_id: int):
    def act(scan, form, actor):
        row = services.set_jaw(scan, form.file_id.data, Jaw(form.jaw.data), actor)
        return f"{row.file_name} is set to {row.jaw.value if row.jaw is not Jaw.UNKNOWN else 'not known'}."

    return _scan_action(scan_id, JawForm(), "jaw", act)


@bp.post("/<int:scan_id>/dismiss")
@requires(*CAN_EDIT)
def dismiss(scan_id: int):
    def act(scan, form, actor):
        services.dismiss(scan, form.reason.data, actor)
        return "Dismissed. It stays under “Dismissed” and can be restored."

    return _scan_action(scan_id, DismissForm(), "dismiss", act)


@bp.post("/<int:scan_id>/restore")
@requires(*CAN_EDIT)
def restore(scan_id: int):
    def act(scan, form, actor):
        services.restore(scan, actor)
        return "Restored. " + _placed(scan, "")

    return _scan_action(scan_id, ActionForm(), "restore", act)
