"""Patients, providers and appointments: lists, forms, the patient page and the CSV import."""
from __future__ import annotations

import datetime as dt

from flask import Blueprint, flash, g, request, url_for
from flask_login import current_user
from sqlalchemy.exc import IntegrityError

from portal.audit.actor import Actor
from portal.cases.forms import choices
from portal.errors import UserError
from portal.extensions import transaction
from portal.people import services
from portal.people.forms import AppointmentForm, ImportForm, PatientForm, ProviderForm
from portal.people.models import Appointment, AppointmentKind, Patient, Provider
from portal.people.services import (
    AppointmentData, PatientData, ProviderData,
)
from portal.web import ANY_ROLE, CAN_EDIT, get_or_404, go_to, render, requires

bp = Blueprint("people", __name__)


def _saved(target: str, message: str):
    """After a successful save: a full-page redirect (htmx follows HX-Redirect)."""
    flash(message, "success")
    return go_to(target)


def _input_error(form, exc: UserError) -> None:
    getattr(form, exc.field).errors = list(getattr(form, exc.field).errors) + [str(exc)]


# ---- patients -------------------------------------------------------------------------------


@bp.get("/patients")
@requires(*ANY_ROLE)
def patients():
    q = request.args.get("q", "").strip()[:100]
    rows = services.search_patients(g.practice.id, q)
    return render("people/patients.html", "rows", patients=rows, q=q)


def _patient_data(form: PatientForm) -> PatientData:
    return PatientData(chart_number=form.chart_number.data, first_name=form.first_name.data,
                       last_name=form.last_name.data, date_of_birth=form.date_of_birth.data,
                       sex=form.sex.data or "", phone=form.phone.data or "", email=form.email.data or "")


def _valid_patient(form: PatientForm, patient: Patient | None) -> bool:
    """The form's own checks plus a taken chart number, so every problem shows at once."""
    ok = form.validate()
    if problem := services.chart_conflict(g.practice.id, form.chart_number.data or "", patient and patient.id):
        form.chart_number.errors = list(form.chart_number.errors) + [problem]
        ok = False
    return ok


def _patient_form(form: PatientForm, patient: Patient | None, code: int = 200):
    return render("people/patient_form.html", "patient_form", code=code, form=form, patient=patient)


@bp.route("/patients/new", methods=["GET", "POST"])
@requires(*CAN_EDIT)
def patient_new():
    form = PatientForm()
    if request.method == "GET":
        return _patient_form(form, None)
    if not _valid_patient(form, None):
        return _patient_form(form, None, 422)
    with transaction(UserError) as outcome:
        patient = services.create_patient(g.practice.id, _patient_data(form), Actor.user(current_user))
    if outcome.refused:
        _input_error(form, outcome.refused)
        return _patient_form(form, None, 422)
    return _saved(url_for("people.patient", patient_id=patient.id), f"{patient.full_name} added.")


@bp.get("/patients/<int:patient_id>")
@requires(*ANY_ROLE)
def patient(patient_id: int):
    patient = get_or_404(Patient, patient_id)
    appointments = services.list_appointments(g.practice.id, patient_id=patient.id)
    return render("people/patient.html", patient=patient, appointments=appointments,
                  cases=services.patient_cases(patient))


@bp.route("/patients/<int:patient_id>/edit", methods=["GET", "POST"])
@requires(*CAN_EDIT)
def patient_edit(patient_id: int):
    patient = get_or_404(Patient, patient_id)
    if request.method == "GET":
        return _patient_form(PatientForm(obj=patient), patient)
    form = PatientForm()
    if not _valid_patient(form, patient):
        return _patient_form(form, patient, 422)
    with transaction(UserError) as outcome:
        changed = services.update_patient(patient, _patient_data(form), Actor.user(current_user))
    if outcome.refused:
        _input_error(form, outcome.refused)
        return _patient_form(form, patient, 422)
    return _saved(url_for("people.patient", patient_id=patient.id),
                  f"{patient.full_name} saved." if changed else "Nothing changed.")


# ---- providers ------------------------------------------------------------------------------


@bp.get("/providers")
@requires(*ANY_ROLE)
def providers():
    return render("people/providers.html", providers=services.list_providers(g.practice.id))


def _provider_data(form: ProviderForm) -> ProviderData:
    return ProviderData(abbr=form.abbr.data, name=form.name.data, license_number=form.license_number.data or "",
                        active=bool(form.active.data))


def _valid_provider(form: ProviderForm, provider: Provider | None) -> bool:
    ok = form.validate()
    if problem := services.abbr_conflict(g.practice.id, form.abbr.data or "", provider and provider.id):
        form.abbr.errors = list(form.abbr.errors) + [problem]
        ok = False
    return ok


def _provider_form(form: ProviderForm, provider: Provider | None, code: int = 200):
    return render("people/provider_form.html", "provider_form", code=code, form=form, provider=provider)


@bp.route("/providers/new", methods=["GET", "POST"])
@requires(*CAN_EDIT)
def provider_new():
    form = ProviderForm()
    if request.method == "GET":
        return _provider_form(form, None)
    if not _valid_provider(form, None):
        return _provider_form(form, None, 422)
    with transaction(UserError) as outcome:
        provider = services.create_provider(g.practice.id, _provider_data(form), Actor.user(current_user))
    if outcome.refused:
        _input_error(form, outcome.refused)
        return _provider_form(form, None, 422)
    return _saved(url_for("people.providers"), f"{provider.name} added.")


@bp.route("/providers/<int:provider_id>/edit", methods=["GET", "POST"])
@requires(*CAN_EDIT)
def provider_edit(provider_id: int):
    provider = get_or_404(Provider, provider_id)
    if request.method == "GET":
        return _provider_form(ProviderForm(obj=provider), provider)
    form = ProviderForm()
    if not _valid_provider(form, provider):
        return _provider_form(form, provider, 422)
    with transaction(UserError) as outcome:
        changed = services.update_provider(provider, _provider_data(form), Actor.user(current_user))
    if outcome.refused:
        _input_error(form, outcome.refused)
        return _provider_form(form, provider, 422)
    return _saved(url_for("people.providers"), f"{provider.name} saved." if changed else "Nothing changed.")


# ---- appointments ---------------------------------------------------------------------------


def _day_arg(name: str) -> tuple[dt.date | None, str]:
    raw = request.args.get(name, "").strip()[:10]
    if not raw:
        return None, ""
    try:
        return dt.date.fromisoformat(raw), ""
    except ValueError:
        return None, f"“{raw}” is not a date; showing all dates."


@bp.get("/appointments")
@requires(*ANY_ROLE)
def appointments():
    start, start_error = _day_arg("from")
    end, end_error = _day_arg("to")
    problem = start_error or end_error
    if start and end and end < start:
        start, end, problem = end, start, "The dates were the wrong way round; they have been swapped."
    listing = services.list_appointments(g.practice.id, start=start, end=end)
    linked = services.cases_by_seat_appointment(a.id for a in listing.upcoming + listing.past)
    return render("people/appointments.html", "rows", listing=listing, linked=linked, start=start, end=end,
                  problem=problem)


def _fill_appointment_choices(form: AppointmentForm) -> None:
    form.patient_id.choices = choices([(0, "— choose —")] + [
        (p.id, f"{p.last_name}, {p.first_name} · {p.chart_number}")
        for p in services.patient_choices(g.practice.id)])
    form.provider_id.choices = choices([(0, "— none —")] + [
        (p.id, f"{p.name} ({p.abbr})" + ("" if p.active else " · inactive"))
        for p in services.list_providers(g.practice.id)])


def _appointment_data(form: AppointmentForm) -> AppointmentData:
    return AppointmentData(patient_id=form.patient_id.data, provider_id=form.provider_id.data or None,
                           starts_at=dt.datetime.combine(form.day.data, form.time.data.replace(second=0)),
                           kind=AppointmentKind(form.kind.data), note=form.note.data or "")


def _appointment_form(form: AppointmentForm, appointment: Appointment | None, code: int = 200):
    return render("people/appointment_form.html", "appointment_form", code=code, form=form,
                  appointment=appointment)


def _after_appointment(appointment: Appointment) -> str:
    back = request.form.get("next", "")
    if back == "patient":
        return url_for("people.patient", patient_id=appointment.patient_id)
    return url_for("people.appointments")


@bp.route("/appointments/new", methods=["GET", "POST"])
@requires(*CAN_EDIT)
def appointment_new():
    form = AppointmentForm()
    _fill_appointment_choices(form)
    if request.method == "GET":
        form.patient_id.data = request.args.get("patient_id", type=int) or 0
        form.kind.data = request.args.get("kind", AppointmentKind.SEAT.value)
        return _appointment_form(form, None)
    if not form.validate():
        return _appointment_form(form, None, 422)
    with transaction(UserError) as outcome:
        appointment = services.create_appointment(g.practice.id, _appointment_data(form), Actor.user(current_user))
    if outcome.refused:
        _input_error(form, outcome.refused)
        return _appointment_form(form, None, 422)
    return _saved(_after_appointment(appointment),
                  f"Appointment on {appointment.starts_at:%a %d %b %Y %H:%M} booked.")


@bp.route("/appointments/<int:appointment_id>/edit", methods=["GET", "POST"])
@requires(*CAN_EDIT)
def appointment_edit(appointment_id: int):
    appointment = get_or_404(Appointment, appointment_id)
    if request.method == "GET":
        form = AppointmentForm(obj=appointment)
        form.day.data, form.time.data = appointment.starts_at.date(), appointment.starts_at.time()
        form.provider_id.data = appointment.provider_id or 0
        form.kind.data = appointment.kind.value
        _fill_appointment_choices(form)
        return _appointment_form(form, appointment)
    form = AppointmentForm()
    _fill_appointment_choices(form)
    if not form.validate():
        return _appointment_form(form, appointment, 422)
    with transaction(UserError) as outcome:
        changed = services.update_appointment(appointment, _appointment_data(form), Actor.user(current_user))
    if outcome.refused:
        _input_error(form, outcome.refused)
        return _appointment_form(form, appointment, 422)
    message = "Nothing changed."
    if changed:
        message = "Appointment saved."
        if "starts_at" in changed:
            message = f"Appointment moved to {appointment.starts_at:%a %d %b %Y %H:%M}; seat risk re-checked."
    return _saved(_after_appointment(appointment), message)


# ---- CSV import -----------------------------------------------------------------------------


@bp.route("/people/import", methods=["GET", "POST"])
@requires(*CAN_EDIT)
def import_csv():
    form = ImportForm()
    if request.method == "GET":
        if request.args.get("kind") in services.IMPORT_KINDS:
            form.kind.data = request.args["kind"]
        return render("people/import.html", "import_panel", form=form, report=None)
    if not form.validate():
        return render("people/import.html", "import_panel", code=422, form=form, report=None)
    upload = form.file.data
    data = upload.stream.read(services.MAX_IMPORT_BYTES + 1)
    with transaction(UserError, IntegrityError) as outcome:
        report = services.run_import(form.kind.data, g.practice.id, data, Actor.user(current_user),
                                     filename=upload.filename or "")
    if isinstance(outcome.refused, UserError):
        form.file.errors = [f"{outcome.refused} Nothing was imported."]
        return render("people/import.html", "import_panel", code=422, form=form, report=None)
    if outcome.refused:  # IntegrityError
        form.file.errors = ["Someone else changed the same rows while this file was importing. "
                            "Nothing was imported; upload it again."]
        return render("people/import.html", "import_panel", code=409, form=form, report=None)
    return render("people/import.html", "import_panel", form=ImportForm(formdata=None, kind=form.kind.data),
                  report=report)
