"""Reports for managers: lab performance, the cases behind each figure, CSV of every table.

Managers and admins read them, as they read the audit trail; coordinators do not (fees and the
comparison of labs are purchasing decisions). Only the current practice's cases are counted; a lab
of another organisation in the query string is not found (404), like any other foreign id.
"""
from __future__ import annotations

import datetime as dt

from flask import Blueprint, Response, abort, g, request, url_for

from portal.cases.catalog import REMAKE_PAYERS, REMAKE_REASONS, RESTORATIONS
from portal.practices.models import Role
from portal.reports import charts, services
from portal.reports.services import Drill, ReportFilters
from portal.web import render, requires

bp = Blueprint("reports", __name__, url_prefix="/reports")
READERS = (Role.MANAGER, Role.ADMIN)


def cases_url(filters: ReportFilters, link: dict | None = None, **more) -> str:
    """The list of the cases behind a figure: the report's filters, narrowed by the figure's."""
    return url_for("reports.cases", **{**filters.as_args(), **(link or {}), **more})


def csv_url(table: str, filters: ReportFilters, **more) -> str:
    return url_for("reports.export", table=table, **{**filters.as_args(), **more})


@bp.context_processor
def _helpers() -> dict:
    return {"fmt_days": services.days, "fmt_percent": services.percent, "fmt_money": services.money,
            "cases_url": cases_url, "csv_url": csv_url, "RESTORATIONS": RESTORATIONS,
            "REMAKE_REASONS": REMAKE_REASONS, "REMAKE_PAYERS": REMAKE_PAYERS}


def _filters() -> tuple[ReportFilters, dict[str, str], list]:
    """The filters of the query string, their errors, and the labs to choose from (404 for a lab
    that is not one of this organisation's)."""
    filters, errors = ReportFilters.parse(request.args, dt.date.today())
    labs = services.lab_choices(g.practice.organization_id)
    if filters.lab_id is not None and filters.lab_id not in {lab.id for lab in labs}:
        abort(404)
    return filters, errors, labs


@bp.get("/")
@requires(*READERS)
def index():
    filters, errors, labs = _filters()
    report = services.build_report(g.practice.id, filters, lab_names={lab.id: lab.name for lab in labs})
    return render("reports/index.html", "report", code=422 if errors else 200, report=report, filters=filters,
                  errors=errors, labs=labs, charts=charts.for_report(report),
                  lab=next((lab for lab in labs if lab.id == filters.lab_id), None))


@bp.get("/cases")
@requires(*READERS)
def cases():
    filters, errors, labs = _filters()
    drill, drill_errors = Drill.parse(request.args, filters)
    errors |= drill_errors
    page = services.Page.parse(request.args, errors)
    rows, total = services.load_page(g.practice.id, filters, drill=drill, limit=page.size, offset=page.offset)
    return render("reports/cases.html", code=422 if errors else 200, cases=rows, total=total, page=page,
                  filters=filters, drill=drill, errors=errors,
                  lab=next((lab for lab in labs if lab.id == filters.lab_id), None))


@bp.get("/<table>.csv")
@requires(*READERS)
def export(table: str):
    if table not in services.TABLES:
        abort(404)
    filters, errors, _ = _filters()
    drill, drill_errors = Drill.parse(request.args, filters)
    if errors or drill_errors:
        return Response(" ".join((errors | drill_errors).values()) + "\n", 422, mimetype="text/plain")
    name = f"lab-report-{table}-{filters.date_from.isoformat()}-{filters.date_to.isoformat()}.csv"
    if table == "cases":
        body = services.cases_csv(services.load_cases(g.practice.id, filters, drill=drill))
    else:
        body = services.table_csv(services.build_report(g.practice.id, filters), table)
    return Response(body, mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'})
