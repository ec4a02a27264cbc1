"""The case page's iTero panel's actions: send the case's Rx to the scanner, withdraw it, and ask
iTero for a rescan (portal/integrations/itero/rx.py does the work and gathers the panel's data for
the case view; jobs/itero.py calls iTero after the commit)."""
from __future__ import annotations

from flask import Blueprint, flash, url_for
from flask_login import current_user
from flask_wtf import FlaskForm

from portal.audit.actor import Actor
from portal.cases.models import LabCase
from portal.extensions import transaction
from portal.integrations.itero import rx
from portal.integrations.itero.forms import RescanForm, RxForm
from portal.integrations.itero.models import ScanRequest
from portal.web import CAN_EDIT, get_or_404, go_to, requires

bp = Blueprint("scanner_rx", __name__)


def _back(case: LabCase):
    target = url_for("cases.show", case_id=case.id)
    return go_to(target)


def _do(case: LabCase, form: FlaskForm, action, success: str):
    if not form.validate():
        flash("The form expired; reload the page and try again.", "error")
        return _back(case)
    with transaction(rx.RxError) as outcome:
        action()
    if outcome.refused:
        flash(str(outcome.refused), "error")
        return _back(case)
    flash(success, "success")
    return _back(case)


@bp.post("/cases/<int:case_id>/itero/rx")
@requires(*CAN_EDIT)
def send_rx(case_id: int):
    case = get_or_404(LabCase, case_id)
    return _do(case, RxForm(), lambda: rx.request_rx(case, Actor.user(current_user)),
               f"{case.number}: the Rx is on its way to iTero; it shows on the scanner in a moment.")


@bp.post("/scan-requests/<int:request_id>/withdraw")
@requires(*CAN_EDIT)
def withdraw_rx(request_id: int):
    scan_request = get_or_404(ScanRequest, request_id)
    case = scan_request.case
    return _do(case, RxForm(), lambda: rx.withdraw_rx(scan_request, Actor.user(current_user)),
               f"{case.number}: withdrawing the Rx from iTero.")


@bp.post("/cases/<int:case_id>/itero/rescan")
@requires(*CAN_EDIT)
def ask_rescan(case_id: int):
    case = get_or_404(LabCase, case_id)
    form = RescanForm()
    return _do(case, form, lambda: rx.ask_rescan(case, form.reason.data or "", Actor.user(current_user)),
               f"{case.number}: asking iTero to send the scan back to the doctor.")
