from __future__ import annotations

import datetime as dt

from flask import Blueprint, Response, g, request, stream_with_context

from portal.audit import queries
from portal.audit.queries import AuditFilters
from portal.practices.models import Role
from portal.web import render, requires

bp = Blueprint("audit", __name__, url_prefix="/audit")


@bp.get("/")
@requires(Role.MANAGER, Role.ADMIN)
def index():
    filters = AuditFilters.from_args(request.args)
    before = request.args.get("before", type=int)
    rows = queries.page(g.practice.id, filters, before)
    return render("audit/index.html", "rows", rows=rows, filters=filters,
                  next_before=rows[-1].seq if len(rows) == 100 else None)


@bp.get("/export.csv")
@requires(Role.MANAGER, Role.ADMIN)
def export():
    filters = AuditFilters.from_args(request.args)
    name = f"audit-{g.practice.id}-{dt.date.today().isoformat()}.csv"
    return Response(stream_with_context(queries.export_csv(g.practice.id, filters)), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
