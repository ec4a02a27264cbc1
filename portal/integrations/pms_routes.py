"""The case page's PMS panel's action: write the case to the practice management system again
(portal/integrations/writeback.py does the work and gives the case view the panel's data)."""
from __future__ import annotations

from flask import Blueprint, abort, flash, url_for
from flask_login import current_user
from flask_wtf import FlaskForm

from portal.audit.actor import Actor
from portal.cases.lifecycle import IllegalMove
from portal.cases.models import LabCase
from portal.extensions import transaction
from portal.integrations.writeback import case_row, retry
from portal.web import CAN_EDIT, get_or_404, go_to, requires

bp = Blueprint("pms_case", __name__, url_prefix="/cases")


@bp.post("/<int:case_id>/pms/retry")
@requires(*CAN_EDIT)
def retry_write(case_id: int):
    case = get_or_404(LabCase, case_id)
    if not FlaskForm().validate():
        abort(400)
    row = case_row(case)
    if row is None:
        abort(404)
    with transaction(IllegalMove) as outcome:
        retry(row, Actor.user(current_user))
    if outcome.refused:
        flash(str(outcome.refused), "error")
        return go_to(url_for("cases.show", case_id=case.id))
    flash(f"Writing {case.number} to {row.integration.vendor.label} again.", "success")
    return go_to(url_for("cases.show", case_id=case.id))
