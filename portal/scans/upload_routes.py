"""Scan files by upload: the upload page (/scans/upload), the live progress of files read in the
background (/scans/<id>/processing), downloads of stored files for the practice
(/scans/files/<id>) and, without a login, for labs through a signed link (/scan-files/<token>).

The upload page is for coordinators and admins (managers read scans elsewhere). An upload that is
refused answers 422 with the reason beside the field (the form for htmx, the page otherwise) and
keeps nothing; one that is too large answers 413 the same way. Another practice's scan, file,
patient or case is not found (404).
"""
from __future__ import annotations

import os

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask_login import current_user
from werkzeug.exceptions import RequestEntityTooLarge

from portal import logfilter
from portal.tokens import guesses
from portal.audit.actor import Actor
from portal.auth.sessions import passive
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.cases.services import patient_options
from portal.extensions import db, limiter
from portal.people.models import Patient
from portal.scans import links, store, uploads
from portal.scans.forms import UploadForm
from portal.scans.models import FileState, Scan, ScanFile
from portal.scans.uploads import Incoming, UploadRefused
from portal.web import ANY_ROLE, CAN_EDIT, api_error, get_or_404, go_to, is_api, render, requires

bp = Blueprint("uploads", __name__, url_prefix="/scans")
files_bp = Blueprint("scan_files", __name__, url_prefix="/scan-files")
files_bp.record_once(lambda state: logfilter.install(state.app, links.PATH))


# ==== the upload page ==============================================================================

def _open_cases(patient: Patient | None) -> list[LabCase]:
    if patient is None:
        return []
    return list(db.session.scalars(db.select(LabCase).where(
        LabCase.practice_id == g.practice.id, LabCase.patient_id == patient.id,
        LabCase.status.in_(Status.open())).order_by(LabCase.id.desc())))


def _chosen(patient_id: int | None, case_id: int | None) -> tuple[Patient | None, LabCase | None]:
    patient = get_or_404(Patient, patient_id) if patient_id else None
    case = get_or_404(LabCase, case_id) if case_id else None
    if case is not None and patient is None:
        patient = case.patient
    return patient, case


def _page(form: UploadForm, patient: Patient | None, case: LabCase | None, *, code: int = 200, error: str = "",
          error_at: str = "files"):
    q = form.patient_q.data or ""
    return render("scanners/upload.html", "upload_form", code=code, form=form, patient=patient, case=case,
                  patients=patient_options(g.practice.id, q, patient.id if patient else None),
                  cases=_open_cases(patient), error=error, error_at=error_at, limits=_limits())


def _limits() -> dict:
    return {"max_mb": current_app.config["SCAN_UPLOAD_MAX_MB"],
            "background_mb": current_app.config["SCAN_BACKGROUND_MB"], "accept": uploads.ACCEPT}


@bp.get("/upload")
@requires(*CAN_EDIT)
def upload_page():
    form = UploadForm(formdata=None)
    patient, case = _chosen(request.args.get("patient_id", type=int), request.args.get("case_id", type=int))
    form.patient_q.data = request.args.get("patient_q", "")[:100]
    return _page(form, patient, case)


@bp.get("/upload/patients")
@requires(*CAN_EDIT)
def upload_patients():
    """The patient choices for what was typed (htmx active search)."""
    q = request.args.get("patient_q", "")[:100]
    selected = request.args.get("patient_id", type=int)
    return render("scanners/_upload_patients.html", patients=patient_options(g.practice.id, q, selected),
                  selected=selected)


@bp.get("/upload/cases")
@requires(*CAN_EDIT)
def upload_cases():
    """The chosen patient's open cases (htmx, when the patient changes)."""
    patient, _ = _chosen(request.args.get("patient_id", type=int), None)
    return render("scanners/_upload_cases.html", patient=patient, case=None, cases=_open_cases(patient))


@bp.post("/upload")
@requires(*CAN_EDIT)
def upload():
    form = UploadForm()
    ok = form.validate()
    patient, case = _chosen(form.patient_id.data, form.case_id.data)
    if request.form.get("find_patient") == "1":  # the patient search without htmx: same page, other matches
        return _page(form, patient, case)
    if not ok:
        field = next(iter(form.errors))
        return _page(form, patient, case, code=422, error=form.errors[field][0], error_at=field)
    incoming = [Incoming(f.filename or "", f.stream) for f in request.files.getlist("files") if f and f.filename]
    try:
        received = uploads.receive(g.practice.id, incoming, actor=Actor.user(current_user), patient=patient, case=case)
    except UploadRefused as exc:
        db.session.rollback()
        patient, case = _chosen(form.patient_id.data, form.case_id.data)
        return _page(form, patient, case, code=422, error=str(exc), error_at=exc.field)
    try:
        db.session.commit()
    except BaseException:
        db.session.rollback()
        received.discard()
        raise
    flash(_note(received), "success")
    target = url_for("scans.show", scan_id=received.scan.id)
    return go_to(target)


def _note(received: uploads.Received) -> str:
    scan = received.scan
    if received.outcome == "unchanged":
        return "This export was brought in before with the same files; nothing changed."
    words = [f"{len(received.files)} file{'s' if len(received.files) != 1 else ''} uploaded."]
    if received.processing:
        words.append(f"{received.processing} large file{'s are' if received.processing != 1 else ' is'} being "
                     "checked in the background; this page shows the progress.")
    if scan.case is not None:
        verb = {"created": "is on a new draft case", "joined": "joined", "linked": "is on"}.get(received.case_action,
                                                                                                 "is on")
        words.append(f"The scan {verb} {scan.case.number}.")
    elif scan.problem:
        words.append(f"It waits in the inbox: {scan.problem}")
    return " ".join(words)


@bp.app_errorhandler(RequestEntityTooLarge)
def _too_large(error):
    """A request larger than MAX_CONTENT_LENGTH (SCAN_UPLOAD_MAX_MB): refused before any of it is
    read (CSRF's check is the first to touch the body), so nothing was kept. htmx gets the message
    as a toast, a plain form post the error page, both with 413; under /api/ it is JSON."""
    if is_api():
        return api_error(413)
    message = (f"That is more than the {current_app.config['SCAN_UPLOAD_MAX_MB']} MB one upload may be; nothing was "
               "uploaded. Upload fewer or smaller files at a time.")
    if request.headers.get("HX-Request"):
        response = render("_toast.html", code=413, message=message, level="error")
        response.headers["HX-Retarget"] = "#toasts"
        response.headers["HX-Reswap"] = "beforeend"
        return response
    return render_template("error.html", status=413, message=message), 413


# ==== progress of files read in the background ========================================================

@bp.get("/<int:scan_id>/processing")
@requires(*ANY_ROLE)
@passive()  # the progress poll is not a person's activity
def processing(scan_id: int):
    """The scan page's progress panel: polled while a file is being read; when none is, the answer
    stops the polling and has the page reload once to show the counts."""
    scan = get_or_404(Scan, scan_id)
    if not request.htmx:
        return redirect(url_for("scans.show", scan_id=scan.id), 303)
    busy = [f for f in scan.current_files if f.state is FileState.PROCESSING]
    response = render("scanners/_processing.html", s=scan, busy=busy, polled=True)
    response.headers["Cache-Control"] = "no-store"
    if not busy:
        response.headers["HX-Refresh"] = "true"
    return response


# ==== downloads ==================================================================================================

def _send(row: ScanFile, name: str):
    path = store.resolve(row.ref)
    if path is None or not path.is_file():
        abort(404)
    response = send_file(path, mimetype="application/octet-stream", as_attachment=True, download_name=name,
                         conditional=True, etag=False, max_age=0)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/files/<int:file_id>")
@requires(*ANY_ROLE)
def download(file_id: int):
    """A stored file for the practice's own people."""
    row = db.session.get(ScanFile, file_id)
    if row is None or row.scan.practice_id != g.practice.id or not store.is_store_ref(row.ref):
        abort(404)
    return _send(row, row.file_name)


def _link_limit() -> str:
    return current_app.config.get("LAB_LINK_RATE_LIMIT", "30 per minute")


per_ip = limiter.shared_limit(_link_limit, scope="scan-file-link")


@files_bp.after_app_request
def _private(response):
    """M3 on every /scan-files/ answer, errors and 429s included: nothing cached, no referrer."""
    if request.path.startswith(links.PATH):
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


@files_bp.errorhandler(429)
def _slow_down(error):
    return render_template("scanners/file_gone.html", problem="slow", status=429), 429


@files_bp.get("/<token>")
@per_ip
@guesses
def lab_download(token: str):
    """A lab fetches a stored file from its work order or its page: no login, the signed token is
    the key (links.py). Changes nothing."""
    found = links.resolve(token)
    if found.problem:
        status = 404 if found.problem == "unknown" else 410
        return render_template("scanners/file_gone.html", problem=found.problem, status=status), status
    return _send(found.file, lab_file_name(found.file))


def lab_file_name(row: ScanFile) -> str:
    """The name a lab's download gets: the case number, the jaw and the format, not the name the
    file had at the practice (TRIOS puts the patient's name in it; docs/reliability.md M5)."""
    ext = os.path.splitext(row.file_name)[1].lower() or f".{row.format.lower()}"
    case = row.scan.case
    label = row.jaw.value if row.jaw.value != "unknown" else row.kind
    return f"{case.number if case else 'scan'}-{label}-{row.id}{ext}"
