from __future__ import annotations

from flask import Blueprint, flash, g, redirect, request, url_for

from portal.admin import services
from portal.admin.forms import ClosureForm, PracticeForm
from portal.extensions import db, transaction
from portal.practices.models import PracticeClosure, Role
from portal.web import get_or_404, render, requires

bp = Blueprint("admin", __name__, url_prefix="/admin")


def _page(form: PracticeForm, closure_form: ClosureForm, code: int = 200):
    return render("admin/practice.html", form=form, closure_form=closure_form, closures=g.practice.closures,
                  code=code)


@bp.route("/practice", methods=["GET", "POST"])
@requires(Role.ADMIN)
def practice():
    form = PracticeForm(obj=g.practice)
    if request.method == "POST":
        if not form.validate():
            return _page(form, ClosureForm(formdata=None), 422)
        changed = services.update_practice(g.practice, {k: form[k].data for k in services.SETTINGS})
        db.session.commit()
        flash("Practice settings saved." if changed else "Nothing changed.", "success")
        return redirect(url_for("admin.practice"), 303)
    return _page(form, ClosureForm(formdata=None))


@bp.post("/practice/closures")
@requires(Role.ADMIN)
def add_closure():
    closure_form = ClosureForm()
    if not closure_form.validate():
        return _page(PracticeForm(obj=g.practice, formdata=None), closure_form, 422)
    with transaction(services.DuplicateClosure) as outcome:
        services.add_closure(g.practice, closure_form.day.data, closure_form.reason.data or "")
    if outcome.refused:
        closure_form.day.errors = [str(outcome.refused)]
        return _page(PracticeForm(obj=g.practice, formdata=None), closure_form, 422)
    flash(f"Closed on {closure_form.day.data:%a %d %b %Y}. Due dates computed from now on skip it.", "success")
    return redirect(url_for("admin.practice"), 303)


@bp.post("/practice/closures/<int:closure_id>/delete")
@requires(Role.ADMIN)
def remove_closure(closure_id: int):
    closure = get_or_404(PracticeClosure, closure_id)
    services.remove_closure(g.practice, closure)
    db.session.commit()
    flash("Closed day removed.", "success")
    return redirect(url_for("admin.practice"), 303)
