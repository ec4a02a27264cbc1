from __future__ import annotations

import datetime as dt
import io

import segno
from flask import Blueprint, flash, g, redirect, request, url_for
from flask_login import current_user
from sqlalchemy import select

from portal.audit.actor import Actor
from portal.board.actions import person_moves
from portal.board.responses import board_response
from portal.cases import services, teeth
from portal.cases.forms import CaseForm, choices, CheckInForm, MoveForm, RemakeForm
from portal.cases.lifecycle import IllegalMove, allowed_moves, undoable
from portal.cases.models import LabCase
from portal.cases.risk import risk_of
from portal.cases.services import CaseData, ItemData
from portal.dispatch import queries as dispatch_queries
from portal.errors import UserError
from portal.extensions import db, transaction
from portal.integrations.itero import rx as itero_rx
from portal.integrations import writeback
from portal.integrations.itero.forms import RescanForm, RxForm
from portal.labcomm import services as labcomm
from portal.labs.models import Lab
from portal.people.models import Appointment, Provider
from portal.reports import turnaround
from portal.scans import queries as scans_queries
from portal.web import ANY_ROLE, CAN_EDIT, get_or_404, go_to, render, requires, safe_next

bp = Blueprint("cases", __name__, url_prefix="/cases")


def _fill_choices(form: CaseForm, patient_id: int | None) -> None:
    practice = g.practice
    form.patient_options = services.patient_options(practice.id, form.patient_q.data or "", patient_id)
    form.provider_id.choices = choices([(0, "— choose —")] + [
        (p.id, p.name) for p in db.session.scalars(
            select(Provider).where(Provider.practice_id == practice.id, Provider.active).order_by(Provider.name))])
    form.lab_id.choices = choices([(0, "— choose —")] + [
        (lab.id, f"{lab.name} ({lab.channel.value})") for lab in db.session.scalars(
            select(Lab).where(Lab.organization_id == practice.organization_id, Lab.active).order_by(Lab.name))])
    _fill_appointments(form, patient_id)


def _fill_appointments(form: CaseForm, patient_id: int | None) -> None:
    """The chosen patient's visits from a month ago on, to pick the seat appointment from."""
    practice = g.practice
    appts = []
    if patient_id:
        appts = db.session.scalars(select(Appointment).where(
            Appointment.practice_id == practice.id, Appointment.patient_id == patient_id,
            Appointment.starts_at >= dt.datetime.combine(dt.date.today() - dt.timedelta(days=30), dt.time()),
            Appointment.not_happening == "",  # broken, unscheduled or deleted in the PMS: not a seat date
        ).order_by(Appointment.starts_at)).all()
    form.seat_appointment_id.choices = choices([(0, "— none yet —")] + [
        (a.id, f"{a.starts_at:%a %d %b %Y %H:%M} · {a.kind.value.replace('_', '-')}") for a in appts])


def _case_data(form: CaseForm) -> CaseData:
    prev_id = None
    if form.previous_stage_number.data:
        prev = services.find_by_number(g.practice.id, form.previous_stage_number.data)
        if prev is None:
            raise UserError("No case of this practice has that number.", field="previous_stage_number")
        prev_id = prev.id
    return CaseData(
        patient_id=form.patient_id.data, provider_id=form.provider_id.data or None,
        lab_id=form.lab_id.data or None, seat_appointment_id=form.seat_appointment_id.data or None,
        due_date=form.due_date.data, instructions=form.instructions.data or "", fee=form.fee.data,
        invoice_number=form.invoice_number.data or "", origin=form.origin.data,
        origin_order_id=form.origin_order_id.data or "", stage=form.stage.data, previous_stage_id=prev_id,
        items=[ItemData(teeth=e.form.teeth.fdi, restoration=e.form.restoration.data,
                        material=(e.form.material.data or "").strip(), shade=(e.form.shade.data or "").strip(),
                        margin=e.form.margin.data or "", notes=e.form.notes.data or "")
               for e in form.items],
    )


def _validated(form: CaseForm) -> bool:
    form.set_numbering(g.practice.tooth_numbering)
    ok = form.validate()
    for name in ("provider_id", "lab_id"):
        if getattr(form, name).data == 0:
            getattr(form, name).errors = list(getattr(form, name).errors) + [f"Choose the {getattr(form, name).label.text.lower()}."]
            ok = False
    return ok


def _form_response(form, case, status=422):
    return render("cases/form.html", "case_form", form=form, case=case, code=status, due_advice=_due_advice(form))


def _due_advice(form: CaseForm) -> turnaround.DueAdvice | None:
    """The lab's stated turnaround and this practice's history with it, for the chosen lab and
    restorations; None until a lab of the practice's group is chosen."""
    lab = db.session.get(Lab, form.lab_id.data) if form.lab_id.data else None
    if lab is None or lab.organization_id != g.practice.organization_id:
        return None
    return turnaround.due_advice(g.practice.id, lab, [e.form.restoration.data for e in form.items])


def _save(form: CaseForm, case: LabCase | None):
    """Validate, call the service, commit; or re-render the form with errors beside the fields."""
    if form.find_patient.data == "1":  # the patient search without htmx: same form, other matches
        form.set_numbering(g.practice.tooth_numbering)
        return _form_response(form, case, 200)
    if form.add_item.data == "1" and len(form.items) < form.items.max_entries:
        form.items.append_entry()
        form.set_numbering(g.practice.tooth_numbering)
        return _form_response(form, case, 200)
    if not _validated(form):
        return _form_response(form, case)
    with transaction(UserError, IllegalMove) as outcome:
        data = _case_data(form)
        if case is None:
            case = services.create_case(g.practice, data, Actor.user(current_user))
        else:
            services.update_case(case, data, Actor.user(current_user))
    if isinstance(outcome.refused, UserError):
        getattr(form, outcome.refused.field or "patient_id", form.patient_id).errors = [str(outcome.refused)]
        return _form_response(form, case)
    if outcome.refused:
        flash(str(outcome.refused), "error")
        return _form_response(form, case, 409)
    flash(f"{case.number} saved.", "success")
    target = url_for("cases.show", case_id=case.id)
    return go_to(target, 302)


@bp.route("/new", methods=["GET", "POST"])
@requires(*CAN_EDIT)
def new():
    form = CaseForm()
    patient_id = request.values.get("patient_id", type=int)
    if request.method == "GET" and patient_id:
        form.patient_id.data = patient_id
    _fill_choices(form, patient_id)
    if request.method == "POST":
        return _save(form, None)
    form.set_numbering(g.practice.tooth_numbering)
    return _form_response(form, None, 200)


@bp.route("/<int:case_id>/edit", methods=["GET", "POST"])
@requires(*CAN_EDIT)
def edit(case_id: int):
    case = get_or_404(LabCase, case_id)
    if request.method == "POST":
        form = CaseForm()
        _fill_choices(form, form.patient_id.data)
        return _save(form, case)
    form = CaseForm(obj=case)
    form.previous_stage_number.data = case.previous_stage.number if case.previous_stage else ""
    form.due_date.data = case.due_date if case.due_date_overridden else None
    while len(form.items):
        form.items.pop_entry()
    for item in case.items:
        form.items.append_entry()
        entry = form.items[-1].form
        entry.teeth.data = teeth.display(item.teeth, g.practice.tooth_numbering).replace("#", "")
        for name in ("restoration", "material", "shade", "margin", "notes"):
            getattr(entry, name).data = getattr(item, name)
    form.seat_appointment_id.data = case.seat_appointment_id or 0
    _fill_choices(form, case.patient_id)
    form.set_numbering(g.practice.tooth_numbering)
    return _form_response(form, case, 200)


@bp.get("/patients")
@requires(*CAN_EDIT)
def patient_options():
    """The case form's patient matches for what was typed (htmx active search)."""
    form = CaseForm(formdata=None)
    form.patient_q.data = request.args.get("patient_q", "")[:100]
    form.patient_id.data = request.args.get("patient_id", type=int)
    form.patient_options = services.patient_options(g.practice.id, form.patient_q.data, form.patient_id.data)
    return render("cases/form.html", "patient_options", form=form)


@bp.get("/appointments")
@requires(*CAN_EDIT)
def appointment_options():
    """The seat-appointment choices for the patient picked in the form (htmx)."""
    form = CaseForm(formdata=None)
    _fill_appointments(form, request.args.get("patient_id", type=int))
    return render("cases/form.html", "appointment_field", form=form)


@bp.get("/due-date")
@requires(*CAN_EDIT)
def due_date_field():
    """The case form's due date with its advice, for the lab and restorations chosen (htmx).
    `use=<date>` puts the suggested date in the field; the coordinator still saves the form."""
    form = CaseForm(formdata=request.args)
    use = request.args.get("use", "")
    try:
        chosen = dt.date.fromisoformat(use) if use else None
    except ValueError:
        chosen = None
    if chosen is not None:
        form.due_date.data, form.due_date.raw_data = chosen, [chosen.isoformat()]
    form.due_date.errors = []
    return render("cases/form.html", "due_field", form=form, due_advice=_due_advice(form))


@bp.get("/<int:case_id>")
@requires(*ANY_ROLE)
def show(case_id: int):
    case = get_or_404(LabCase, case_id)
    panels = _panels(case)
    pms_row = panels["pms_panel"]
    return render(
        "cases/show.html", case=case, moves=allowed_moves(case), events=services.timeline(case),
        PMS_WRITE_LABELS=services.pms_write_labels(pms_row.integration.vendor.label if pms_row else "the PMS"),
        risk=risk_of(case), move_form=MoveForm(), remake_form=RemakeForm(), checkin_form=CheckInForm(),
        remakes=db.session.scalars(select(LabCase).where(LabCase.remake_of_id == case.id)).all(),
        next_stages=db.session.scalars(select(LabCase).where(LabCase.previous_stage_id == case.id)).all(),
        **panels,
    )


def _panels(case: LabCase) -> dict:
    """The case page's panels, each a named block of cases/show.html, each with its data from the
    feature that owns it (a panel's own actions post to that feature's routes)."""
    return {
        # Approve and send, and how sending went: the newest dispatch and its order events.
        "dispatch_panel": dispatch_queries.dispatch_panel(case),
        # The Rx sent to iTero, withdrawing it, asking iTero for a rescan (None: nothing to show).
        "itero_panel": itero_rx.panel(case),
        "rx_form": RxForm(),
        "rescan_form": RescanForm(reason=case.status_reason),
        # The case's lab case in the practice management system and its last write (None: no PMS).
        "pms_panel": writeback.case_row(case),
        # What each scanner sent for this case.
        "scans_panel": scans_queries.scans_with_files(case.id),
        # Messages with the lab, and how each reaches it (email, its API, a phone call).
        "messages_panel": labcomm.messages_panel(case),
    }


def _board_response(status: int, message: str | None = None, level: str = "error", **extra):
    return board_response(status, message, level, **extra)


@bp.get("/<int:case_id>/menu")
@requires(*CAN_EDIT)
def menu(case_id: int):
    """A board card's Move menu, fetched when the menu is opened."""
    case = get_or_404(LabCase, case_id)
    return render("board/_card_menu.html", case=case, moves=allowed_moves(case))


@bp.post("/<int:case_id>/move")
@requires(*CAN_EDIT)
def move(case_id: int):
    case = get_or_404(LabCase, case_id)
    form = MoveForm()
    from_board = request.htmx and request.htmx.target == "board-columns"
    if not form.validate():
        message = "Choose where to move the case."
        return _board_response(422, message) if from_board else _back(case, message, "error")
    with transaction(IllegalMove) as outcome:
        # A send's problem (or an unconfirmed seat risk) raises IllegalMove saying what is wrong.
        person_moves(case, form.status.data, current_user, form.reason.data or "")
    if outcome.refused:
        refused = str(outcome.refused)
        return _board_response(409, refused) if from_board else _back(case, refused, "error", 409)
    message = f"{case.number} moved to {case.status.label}."
    # Made by mistake? The board's toast offers to put it back, for as long as the undo allows.
    latest = services.latest_event(case)
    undo = {"url": url_for("cases.undo", case_id=case.id), "seq": latest.seq} \
        if latest is not None and undoable(latest, Actor.user(current_user)) else None
    return _board_response(200, message, "success", undo=undo) if from_board else _back(case, message, "success")


@bp.post("/<int:case_id>/undo")
@requires(*CAN_EDIT)
def undo(case_id: int):
    """Undo a move made a moment ago (lifecycle.undo), from the button in the move's toast."""
    case = get_or_404(LabCase, case_id)
    from_board = request.htmx and request.htmx.target == "board-columns"
    seq = request.form.get("event", type=int)
    with transaction(IllegalMove) as outcome:
        if seq is None:
            raise IllegalMove("Which move? Use the Undo button of the move's message.")
        services.undo_move(case, seq, Actor.user(current_user))
    if outcome.refused:
        refused = str(outcome.refused)
        return _board_response(409, refused) if from_board else _back(case, refused, "error", 409)
    message = f"Undone: {case.number} is back in {case.status.label}."
    return _board_response(200, message, "success") if from_board else _back(case, message, "success")


def _back(case: LabCase, message: str, level: str, status: int = 303):
    flash(message, level)
    return go_to(safe_next(request.form.get("next"), url_for("cases.show", case_id=case.id)))


@bp.post("/<int:case_id>/check-in")
@requires(*CAN_EDIT)
def check_in(case_id: int):
    case = get_or_404(LabCase, case_id)
    form = CheckInForm()
    if not form.validate():
        return _back(case, "The check-in form was incomplete.", "error")
    with transaction(IllegalMove) as outcome:
        services.check_in(case, Actor.user(current_user), form.quality_checked.data, form.quality_note.data or "")
    if outcome.refused:
        return _back(case, str(outcome.refused), "error")
    return _back(case, f"{case.number} checked in{' and quality checked' if case.quality_checked else ''}.",
                 "success")


@bp.post("/<int:case_id>/remake")
@requires(*CAN_EDIT)
def remake(case_id: int):
    case = get_or_404(LabCase, case_id)
    form = RemakeForm()
    if not form.validate():
        errors = "; ".join(e for errs in form.errors.values() for e in errs)
        return _back(case, f"Remake not created: {errors}", "error")
    with transaction(IllegalMove) as outcome:
        new = services.remake(case, Actor.user(current_user), form.reason.data, form.payer.data, form.notes.data)
    if outcome.refused:
        return _back(case, str(outcome.refused), "error")
    flash(f"Remake {new.number} created from {case.number}. Check the prescription, then send it.", "success")
    return redirect(url_for("cases.edit", case_id=new.id), 303)


@bp.get("/<int:case_id>/label")
@requires(*ANY_ROLE)
def label(case_id: int):
    case = get_or_404(LabCase, case_id)
    qr = segno.make(case.number, error="m")
    buffer = io.BytesIO()
    qr.save(buffer, kind="svg", scale=4, border=2, xmldecl=False, svgns=True)
    return render("cases/label.html", case=case, qr_svg=buffer.getvalue().decode())


@bp.get("/<int:case_id>/slip")
@requires(*ANY_ROLE)
def slip(case_id: int):
    case = get_or_404(LabCase, case_id)
    return render("cases/slip.html", case=case)


@bp.get("/find")
@requires(*ANY_ROLE)
def find():
    """The top bar's "find case" box. A case number (a barcode scanner types it from the box label
    and presses Enter) opens that case; anything else is the board's own search, so both boxes
    find the same cases and say so the same way when nothing matches."""
    text = request.args.get("number", "").strip()[:100]
    case = services.find_by_number(g.practice.id, text)
    if case is not None:
        return redirect(url_for("cases.show", case_id=case.id))
    if not text:
        flash("Type a patient's name, a chart number or a case number.", "error")
    return redirect(url_for("board.index", **({"q": text} if text else {})))
