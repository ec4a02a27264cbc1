"""The lab directory: coordinators and managers read it, admins change it."""
from __future__ import annotations

from flask import Blueprint, abort, flash, g, redirect, request, url_for
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from portal.audit.actor import Actor
from portal.extensions import db, transaction
from portal.labs import services
from portal.labs.forms import LabForm, SecretForm
from portal.labs.models import Channel, Lab
from portal.labs.services import LabData, LabError, ServiceData
from portal.practices.models import Role
from portal.web import ANY_ROLE, render, requires

bp = Blueprint("labs", __name__, url_prefix="/labs")
ADMIN = (Role.ADMIN,)


def _lab_or_404(lab_id: int) -> Lab:
    """Labs belong to the organisation: another organisation's lab is simply not found."""
    lab = db.session.get(Lab, lab_id)
    if lab is None or lab.organization_id != g.practice.organization_id:
        abort(404)
    return lab


def _is_admin() -> bool:
    return current_user.role_in(g.practice.id) is Role.ADMIN


def _is_org_admin() -> bool:
    """Labs are shared by the organisation's practices: their API address and signing secrets are
    the organisation's administrators' to change (portal/labs/services.py SHARED_ONLY)."""
    return current_user.administers(g.practice.organization_id)


@bp.get("/")
@requires(*ANY_ROLE)
def index():
    labs = db.session.scalars(
        select(Lab).where(Lab.organization_id == g.practice.organization_id)
        .options(selectinload(Lab.services)).order_by(Lab.name)
    ).all()
    return render("labs/index.html", labs=labs, is_admin=_is_admin())


@bp.get("/<int:lab_id>")
@requires(*ANY_ROLE)
def show(lab_id: int):
    lab = _lab_or_404(lab_id)
    return _show(lab)


def _show(lab: Lab, *, new_secret: str = "", code: int = 200):
    response = render("labs/show.html", lab=lab, is_admin=_is_admin(), is_org_admin=_is_org_admin(),
                      secret_form=SecretForm(),
                      active=services.active_secrets(lab), new_secret=new_secret, code=code)
    if new_secret:
        response.headers["Cache-Control"] = "no-store"
    return response


def _data(form: LabForm) -> LabData:
    return LabData(
        name=form.name.data, channel=Channel(form.channel.data), contact_name=(form.contact_name.data or "").strip(),
        email=form.email.data or "", cc_emails=form.cc_emails.data or "", phone=(form.phone.data or "").strip(),
        address=(form.address.data or "").strip(), api_url=form.api_url.data or "", active=form.active.data,
        notes=form.notes.data or "",
        services=[ServiceData(restoration=e.form.restoration.data, materials=e.form.materials.data or "",
                              turnaround_days=e.form.turnaround_days.data, fee=e.form.fee.data)
                  for e in form.services if not e.form.remove.data],
    )


def _form_page(form: LabForm, lab: Lab | None, code: int = 200):
    return render("labs/form.html", "lab_form", form=form, lab=lab, is_org_admin=_is_org_admin(), code=code)


def _save(form: LabForm, lab: Lab | None):
    if form.add_service.data == "1":
        if len(form.services) < form.services.max_entries:
            form.services.append_entry()
        form.add_service.data = ""
        return _form_page(form, lab)
    if not form.validate():
        return _form_page(form, lab, 422)
    actor = Actor.user(current_user)
    with transaction(LabError) as outcome:
        if lab is None:
            lab = services.create_lab(g.practice.organization_id, _data(form), actor, g.practice.id,
                                      org_admin=_is_org_admin())
            message = f"{lab.name} added to the lab directory."
        else:
            changed = services.update_lab(lab, _data(form), actor, g.practice.id, org_admin=_is_org_admin())
            message = f"{lab.name} saved." if changed else "Nothing changed."
    if outcome.refused:
        field = outcome.refused.field and getattr(form, outcome.refused.field, None)
        (field.errors if field is not None else form.form_errors).append(str(outcome.refused))
        return _form_page(form, lab, 422)
    flash(message, "success")
    return redirect(url_for("labs.show", lab_id=lab.id), 303)


@bp.route("/new", methods=["GET", "POST"])
@requires(*ADMIN)
def new():
    form = LabForm()
    if request.method == "POST":
        return _save(form, None)
    form.channel.data = Channel.EMAIL.value
    form.active.data = True
    form.services.append_entry()
    return _form_page(form, None)


@bp.route("/<int:lab_id>/edit", methods=["GET", "POST"])
@requires(*ADMIN)
def edit(lab_id: int):
    lab = _lab_or_404(lab_id)
    if request.method == "POST":
        return _save(LabForm(), lab)
    form = LabForm(obj=lab)
    form.channel.data = lab.channel.value
    while len(form.services):
        form.services.pop_entry()
    for service in lab.services:
        form.services.append_entry()
        entry = form.services[-1].form
        entry.restoration.data = service.restoration
        entry.materials.data = service.materials
        entry.turnaround_days.data = service.turnaround_days
        entry.fee.data = service.fee
    return _form_page(form, lab)


@bp.post("/<int:lab_id>/secrets")
@requires(*ADMIN)
def generate_secret(lab_id: int):
    """Shows the new secret once, in this response only (never in a flash: the session cookie
    is signed, not encrypted)."""
    lab = _lab_or_404(lab_id)
    if not _is_org_admin():
        abort(403)
    if not SecretForm().validate():
        abort(400)
    with transaction(LabError) as outcome:
        _, value = services.generate_secret(lab, Actor.user(current_user), g.practice.id, org_admin=_is_org_admin())
    if outcome.refused:
        flash(str(outcome.refused), "error")
        return _show(lab, code=409)
    return _show(lab, new_secret=value)


@bp.post("/<int:lab_id>/secrets/<int:secret_id>/revoke")
@requires(*ADMIN)
def revoke_secret(lab_id: int, secret_id: int):
    lab = _lab_or_404(lab_id)
    if not _is_org_admin():
        abort(403)
    if not SecretForm().validate():
        abort(400)
    with transaction(LabError) as outcome:
        services.revoke_secret(lab, secret_id, Actor.user(current_user), g.practice.id, org_admin=_is_org_admin())
    if outcome.refused:
        flash(str(outcome.refused), "error")
        return redirect(url_for("labs.show", lab_id=lab.id), 303)
    flash("Secret revoked: the lab's deliveries signed with it are now refused.", "success")
    return redirect(url_for("labs.show", lab_id=lab.id), 303)
