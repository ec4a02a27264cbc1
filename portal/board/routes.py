from __future__ import annotations

from flask import Blueprint, current_app, g, make_response, request
from flask_login import current_user
from sqlalchemy import select

from portal.auth.sessions import passive
from portal.board import services
from portal.board.responses import board_response
from portal.board.services import Filters
from portal.cases import services as cases_services
from portal.cases.models import LabCase
from portal.cases.risk import risk_of
from portal.cases.status import Status
from portal.extensions import db
from portal.labs.models import Lab
from portal.people.models import Provider
from portal.reports.services import next_appointments
from portal.web import ANY_ROLE, CAN_EDIT, render, requires, wants_fragment

bp = Blueprint("board", __name__)


def _filter_choices() -> dict:
    practice = g.practice
    return {
        "labs": db.session.scalars(select(Lab).where(Lab.organization_id == practice.organization_id)
                                   .order_by(Lab.name)).all(),
        "providers": db.session.scalars(select(Provider).where(Provider.practice_id == practice.id)
                                        .order_by(Provider.name)).all(),
    }


@bp.get("/")
@requires(*ANY_ROLE)
@passive(lambda: "since" in request.args and bool(request.htmx))  # the board's poll is not activity
def index():
    filters = Filters.from_args(request.args)
    stamp = services.board_stamp(g.practice.id)
    since = request.args.get("since", type=int)
    if since is not None and since == stamp and request.htmx:
        # The idle poll: one cheap query and an empty answer.
        response = make_response("", 204)
        response.vary.add("HX-Request")
        return response
    columns = services.load_board(g.practice.id, filters, current_app.config["BOARD_COLUMN_LIMIT"])
    choices = _filter_choices() if not request.htmx else {}
    # Nothing matches: say so, and when the search is the number of a case the board does not show
    # (cancelled, fitted weeks ago), where it is. One more statement, only on an empty board.
    nothing = filters.active and not any(c.count for c in columns)
    elsewhere = cases_services.find_by_number(g.practice.id, filters.q) if nothing and filters.q else None
    return render("board/index.html", "columns", columns=columns, filters=filters, stamp=stamp,
                  phases=services.PHASES, due_windows=services.DUE_WINDOWS, sorts=services.SORTS, nothing=nothing,
                  elsewhere=elsewhere, **choices)


BULK_ACTIONS = ("assign_lab", "move", "cancel")
BULK_MAX = 200


@bp.post("/board/bulk")
@requires(*CAN_EDIT)
def bulk():
    """The selected cards: choose their lab, move them or cancel them with a reason; each case as
    one card would be, each with its audit row, the refused ones named with the reason."""
    from portal.board.actions import bulk as apply_bulk

    action = request.form.get("action", "")
    ids = sorted({int(i) for i in request.form.getlist("case") if i.isdigit()})
    reason = (request.form.get("reason") or "").strip()[:500]
    problem = None
    if action not in BULK_ACTIONS:
        problem = "Choose what to do with the selected cases."
    elif not ids:
        problem = "Select one or more cases first (the box on each card)."
    elif len(ids) > BULK_MAX:
        problem = f"Select at most {BULK_MAX} cases at a time."
    elif action == "cancel" and not reason:
        problem = "Cancelling needs a reason: the lab and your colleagues will see it."
    lab_id, lab = request.form.get("lab", type=int), None
    if problem is None and action == "assign_lab":
        lab = db.session.get(Lab, lab_id) if lab_id else None
        if lab is None or lab.organization_id != g.practice.organization_id or not lab.active:
            problem = "Choose one of your labs."
    status = request.form.get("status", "")
    if problem is None and action == "move" and status not in {s.value for s in services.COLUMNS}:
        problem = "Choose the column to move the cases to."
    if problem:
        return board_response(422, problem)
    cases = db.session.scalars(select(LabCase).where(LabCase.practice_id == g.practice.id, LabCase.id.in_(ids))
                               .order_by(LabCase.id)).all()
    if len(cases) != len(ids):
        return board_response(404, "Some of the selected cases are not in this practice any more; reload the board.")
    result = apply_bulk(list(cases), action, current_user, lab_id=lab_id, status=status, reason=reason)
    db.session.commit()
    verb = {"assign_lab": f"now with {lab.name}" if action == "assign_lab" else "",
            "move": f"moved to {Status(status).label}" if action == "move" else "", "cancel": "cancelled"}[action]
    return board_response(200, result.summary(verb), "error" if result.refused else "success",
                          refused=result.refused)


@bp.get("/board/column/<status>")
@requires(*ANY_ROLE)
def column(status: str):
    try:
        status = Status(status)
    except ValueError:
        return "", 404
    filters = Filters.from_args(request.args)
    offset = max(request.args.get("offset", 0, type=int), 0)
    limit = current_app.config["BOARD_COLUMN_LIMIT"]
    cards = services.load_column(g.practice.id, status, filters, offset, limit + 1)
    context = dict(cards=cards[:limit], status=status, filters=filters,
                   next_offset=offset + limit if len(cards) > limit else None)
    if wants_fragment():
        return render("board/column_more.html", **context)
    # Without htmx the link still works: a page of that column's cards.
    return render("board/column_page.html", prev_offset=max(offset - limit, 0) if offset else None, **context)


@bp.get("/risk")
@requires(*ANY_ROLE)
def risk():
    cases = services.risk_list(g.practice.id)
    return render("board/risk.html", cases=cases, why={c.id: risk_of(c)[1] for c in cases},
                  next_visit=next_appointments(g.practice.id, {c.patient_id for c in cases}))


@bp.get("/day")
@requires(*ANY_ROLE)
def day():
    import datetime as dt

    try:
        chosen = dt.date.fromisoformat(request.args.get("date", ""))
    except ValueError:
        chosen = dt.date.today()
    view = services.day_view(g.practice.id, chosen)
    return render("board/day.html", view=view, prev_day=chosen - dt.timedelta(days=1),
                  next_day=chosen + dt.timedelta(days=1))
