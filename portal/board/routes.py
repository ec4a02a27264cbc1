from __future__ import annotations

from flask import Blueprint, current_app, g, make_response, request
from sqlalchemy import select

from portal.board import services
from portal.board.services import Filters
from portal.cases import services as cases_services
from portal.cases.status import Status
from portal.extensions import db
from portal.labs.models import Lab
from portal.people.models import Provider
from portal.auth.sessions import passive
from portal.web import ANY_ROLE, render, requires, wants_fragment

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
    from portal.cases.risk import risk_of
    from portal.reports.services import next_appointments

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
