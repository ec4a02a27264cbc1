"""Approve and send (a person's deliberate act), retrying a failed dispatch, and retrying an
update (order notice) the lab's API did not take."""
from __future__ import annotations

from flask import Blueprint, abort, flash, g, request, url_for
from flask_login import current_user

from portal.audit.actor import Actor
from portal.cases.lifecycle import IllegalMove
from portal.cases.models import LabCase
from portal.dispatch import notices, services
from portal.dispatch.forms import RetryForm, SendForm
from portal.dispatch.models import RETRYING_AFTER, Dispatch, DispatchState, OrderNotice
from portal.dispatch.validation import check_case
from portal.clock import utcnow
from portal.extensions import db, transaction
from portal.labcomm import services as labcomm
from portal.web import CAN_EDIT, get_or_404, go_to, render, requires, safe_next

bp = Blueprint("dispatch", __name__)


@bp.app_template_filter("next_attempt")
def next_attempt(when) -> str:
    """When a retry is due, for people: "14:05 UTC" today, "Fri 04 Dec 02:05 UTC" another day.
    (Practices keep no time zone yet, so the time says UTC.)"""
    if when.date() == utcnow().date():
        return when.strftime("%H:%M UTC")
    return when.strftime("%a %d %b %H:%M UTC")


@bp.app_template_filter("retrying")
def retrying(row) -> bool:
    """A work order or order event waiting for its next attempt after two or more failures."""
    return row.state is DispatchState.PENDING and row.attempts >= RETRYING_AFTER and row.next_attempt_at is not None


def _page(case: LabCase, form: SendForm, check, code: int = 200, error: str = ""):
    return render("dispatch/send.html", "send_check", code=code, case=case, form=form, check=check,
                  error=error, sendable=case.status in services.SENDABLE)


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
    with transaction(IllegalMove) as outcome:
        dispatch = services.approve_and_send(case, Actor.user(current_user), confirm_risk=form.confirm_risk.data)
    if outcome.refused:
        return _page(case, form, check_case(case), 409, str(outcome.refused))
    how = {"api": "The work order is on its way to", "email": "An email with a private link goes to",
           "manual": "Now phone"}[dispatch.channel.value]
    flash(f"{case.number} approved and sent. {how} {case.lab.name}.", "success")
    return go_to(url_for("cases.show", case_id=case.id))


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


def _target(case: LabCase) -> str:
    """Where to go after a retry: the form's `next` when it is a path on this site, else the case."""
    return safe_next(request.form.get("next"), url_for("cases.show", case_id=case.id))


def _retry(dispatch: Dispatch):
    case = dispatch.case
    target = _target(case)
    if not RetryForm().validate():
        flash("The form expired; reload the page and try again.", "error")
        return go_to(target)
    with transaction(IllegalMove) as outcome:
        labcomm.retry(dispatch, Actor.user(current_user))
    if outcome.refused:
        flash(str(outcome.refused), "error")
        return go_to(target)
    flash(f"{case.number}: sending to {case.lab.name} again.", "success")
    return go_to(target)


@bp.post("/notices/<int:notice_id>/retry")
@requires(*CAN_EDIT)
def retry_notice(notice_id: int):
    """Retry one update the lab's API did not take (the case page and the messages panel)."""
    notice = get_or_404(OrderNotice, notice_id)
    return _retry_notices(get_or_404(LabCase, notice.case_id), [notice])


@bp.post("/cases/<int:case_id>/notices/retry")
@requires(*CAN_EDIT)
def retry_case_notices(case_id: int):
    """The board card's Retry: every update of the case that was not delivered, oldest first."""
    case = get_or_404(LabCase, case_id)
    return _retry_notices(case, notices.failed_notices(case.id))


def _retry_notices(case: LabCase, failed: list[OrderNotice]):
    target = _target(case)
    if not RetryForm().validate():
        flash("The form expired; reload the page and try again.", "error")
        return go_to(target)
    if not failed:
        flash(f"{case.number}: no update to {case.lab.name} is waiting for a retry.", "error")
        return go_to(target)
    with transaction(IllegalMove) as outcome:
        for notice in failed:
            notices.retry(notice, Actor.user(current_user))
    if outcome.refused:
        flash(str(outcome.refused), "error")
        return go_to(target)
    what = failed[0].type.label.lower() if len(failed) == 1 else f"{len(failed)} updates"
    flash(f"{case.number}: sending the {what} to {case.lab.name} again.", "success")
    return go_to(target)
