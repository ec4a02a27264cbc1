"""Approve and send (a person's deliberate act), and retrying a failed dispatch."""
from __future__ import annotations

from flask import Blueprint, abort, flash, g, make_response, redirect, request, url_for
from flask_login import current_user

from portal.audit.actor import Actor
from portal.cases.lifecycle import IllegalMove
from portal.cases.models import LabCase
from portal.dispatch import services
from portal.dispatch.forms import RetryForm, SendForm
from portal.dispatch.models import Dispatch
from portal.dispatch.validation import check_case
from portal.extensions import db
from portal.web import CAN_EDIT, get_or_404, render, requires

bp = Blueprint("dispatch", __name__)


@bp.app_template_global("case_dispatch")
def case_dispatch(case_id: int) -> Dispatch | None:
    """The newest dispatch of a case, for the dispatch panel on the case page."""
    return services.latest_dispatch(case_id)


@bp.app_template_global("retry_form")
def retry_form() -> RetryForm:
    return RetryForm()


def _page(case: LabCase, form: SendForm, check, code: int = 200, error: str = ""):
    return render("dispatch/send.html", "send_check", code=code, case=case, form=form, check=check,
                  error=error, sendable=case.status in services.SENDABLE)


def _redirect(target: str):
    if request.htmx:
        response = make_response("", 204)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target, 303)


@bp.route("/cases/<int:case_id>/send", methods=["GET", "POST"])
@requires(*CAN_EDIT)
def send(case_id: int):
    case = get_or_404(LabCase, case_id)
    form = SendForm()
    check = check_case(case)
    if request.method == "GET":
        return _page(case, form, check, 422 if check.problems else 200)
    if not form.validate():
        return _page(case, form, check, 400, "The form expired; reload the page and try again.")
    if check.warnings and not form.confirm_risk.data:
        form.confirm_risk.errors = ["Tick this to send the case although the work may come back late."]
    if check.problems or form.confirm_risk.errors:
        return _page(case, form, check, 422)
    try:
        dispatch = services.approve_and_send(case, Actor.user(current_user), confirm_risk=form.confirm_risk.data)
    except IllegalMove as exc:
        db.session.rollback()
        return _page(case, form, check_case(case), 409, str(exc))
    db.session.commit()
    how = {"api": "The work order is on its way to", "email": "An email with a private link goes to",
           "manual": "Now phone"}[dispatch.channel.value]
    flash(f"{case.number} approved and sent. {how} {case.lab.name}.", "success")
    return _redirect(url_for("cases.show", case_id=case.id))


@bp.post("/dispatch/<dispatch_id>/retry")
@requires(*CAN_EDIT)
def retry(dispatch_id: str):
    dispatch = db.session.get(Dispatch, dispatch_id)
    if dispatch is None or dispatch.practice_id != g.practice.id:
        abort(404)
    return _retry(dispatch)


@bp.post("/cases/<int:case_id>/dispatch/retry")
@requires(*CAN_EDIT)
def retry_case(case_id: int):
    """The board card's Retry: the case's latest dispatch."""
    case = get_or_404(LabCase, case_id)
    dispatch = services.latest_dispatch(case.id)
    if dispatch is None:
        abort(404)
    return _retry(dispatch)


def _retry(dispatch: Dispatch):
    case = dispatch.case
    target = request.form.get("next") or url_for("cases.show", case_id=case.id)
    if not target.startswith("/") or target.startswith("//"):
        target = url_for("cases.show", case_id=case.id)
    if not RetryForm().validate():
        flash("The form expired; reload the page and try again.", "error")
        return _redirect(target)
    try:
        services.retry(dispatch, Actor.user(current_user))
    except IllegalMove as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return _redirect(target)
    db.session.commit()
    flash(f"{case.number}: sending to {case.lab.name} again.", "success")
    return _redirect(target)
