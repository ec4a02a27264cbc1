"""Reports for managers: lab performance, the cases behind each figure, CSV of every table.

Managers and admins read them, as they read the audit trail; coordinators do not (fees and the
comparison of labs are purchasing decisions). Only the current practice's cases are counted; a lab
of another organisation in the query string is not found (404), like any other foreign id.

The DSO view (/reports/organisation) is the same report across every practice of the current
practice's organisation, with each practice's figures and its labs' side by side. Only
organisation managers of that organisation read it (OrganizationMembership); everyone else,
a practice's own admin included, gets 403. A practice or a lab of another organisation in its
query string is not found (404).
"""
from __future__ import annotations

import datetime as dt
import functools

from flask import Blueprint, Response, abort, g, request, url_for
from flask_login import current_user

from portal.cases.catalog import REMAKE_PAYERS, REMAKE_REASONS, RESTORATIONS
from portal.practices.models import Role
from portal.reports import charts, services
from portal.extensions import login_manager
from portal.reports.services import Drill, OrganisationFilters, ReportFilters
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
                  lab=next((lab for lab in labs if lab.id == filters.lab_id), None),
                  manages_organisation=not request.headers.get("HX-Request")
                  and current_user.manages(g.practice.organization_id))


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


# -- the DSO view: the organisation's practices side by side -------------------------------------------

def requires_organisation_manager(view):
    """Signed in, in a practice, and an organisation manager of that practice's organisation:
    anyone else gets 403 (a practice's manager or admin included: the view spans practices they
    may not belong to)."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if not current_user.is_authenticated:
            return login_manager.unauthorized()
        if g.get("practice") is None or not current_user.manages(g.practice.organization_id):
            abort(403)
        return view(*args, **kwargs)

    return wrapped


def org_cases_url(filters: ReportFilters, link: dict | None = None, **more) -> str:
    return url_for("reports.organisation_cases", **{**filters.as_args(), **(link or {}), **more})


def org_csv_url(table: str, filters: ReportFilters, **more) -> str:
    return url_for("reports.organisation_export", table=table, **{**filters.as_args(), **more})


def _organisation_filters():
    """The DSO view's filters and errors, the organisation's labs and practices; 404 for a lab or
    a practice that is not the organisation's."""
    filters, errors = OrganisationFilters.parse(request.args, dt.date.today())
    organization_id = g.practice.organization_id
    labs = services.lab_choices(organization_id)
    practices = services.practice_choices(organization_id)
    if filters.lab_id is not None and filters.lab_id not in {lab.id for lab in labs}:
        abort(404)
    if filters.practice_id is not None and filters.practice_id not in {p.id for p in practices}:
        abort(404)
    return filters, errors, labs, practices


def _organisation_report(filters, labs, practices):
    shown = [p for p in practices if not filters.practice_id or p.id == filters.practice_id]
    return services.build_organisation_report(g.practice.organization_id, shown, filters,
                                              lab_names={lab.id: lab.name for lab in labs})


ORGANISATION_LINKS = {"cases_url": org_cases_url, "csv_url": org_csv_url}


@bp.get("/organisation")
@requires_organisation_manager
def organisation():
    filters, errors, labs, practices = _organisation_filters()
    org = _organisation_report(filters, labs, practices)
    found = charts.for_report(org.report)
    if not org.report.empty:
        found["practice_turnaround"] = charts.turnaround(org.practices, "chart-practice-turnaround", "practice")
        found["practice_on_time"] = charts.on_time(org.practices, "chart-practice-on-time", "practice")
    return render("reports/organisation.html", "report", code=422 if errors else 200, org=org, report=org.report,
                  filters=filters, errors=errors, labs=labs, practices=practices, charts=found,
                  lab=next((lab for lab in labs if lab.id == filters.lab_id), None),
                  practice=next((p for p in practices if p.id == filters.practice_id), None),
                  **ORGANISATION_LINKS)


@bp.get("/organisation/cases")
@requires_organisation_manager
def organisation_cases():
    filters, errors, labs, practices = _organisation_filters()
    drill, drill_errors = Drill.parse(request.args, filters)
    errors |= drill_errors
    page = services.Page.parse(request.args, errors)
    rows, total = services.load_page([p.id for p in practices], filters, drill=drill,
                                     limit=page.size, offset=page.offset)
    return render("reports/cases.html", code=422 if errors else 200, cases=rows, total=total, page=page,
                  filters=filters, drill=drill, errors=errors, across=True,
                  lab=next((lab for lab in labs if lab.id == filters.lab_id), None),
                  practice=next((p for p in practices if p.id == filters.practice_id), None),
                  back_url=url_for("reports.organisation", **filters.as_args()), back_label="Practices side by side",
                  list_url=org_cases_url, export_url=org_csv_url, cases_url=org_cases_url)


@bp.get("/organisation/<table>.csv")
@requires_organisation_manager
def organisation_export(table: str):
    if table not in services.ORGANISATION_TABLES:
        abort(404)
    filters, errors, labs, practices = _organisation_filters()
    drill, drill_errors = Drill.parse(request.args, filters)
    if errors or drill_errors:
        return Response(" ".join((errors | drill_errors).values()) + "\n", 422, mimetype="text/plain")
    name = f"organisation-report-{table}-{filters.date_from.isoformat()}-{filters.date_to.isoformat()}.csv"
    if table == "cases":
        body = services.cases_csv(services.load_cases([p.id for p in practices],
                                                      filters, drill=drill), across=True)
    else:
        org = _organisation_report(filters, labs, practices)
        body = (services.organisation_csv(org, table) if table in ("practices", "practice-labs")
                else services.table_csv(org.report, table))
    return Response(body, mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'})
