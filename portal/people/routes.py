from __future__ import annotations

from flask import Blueprint, g, request
from sqlalchemy import func, or_, select

from portal.extensions import db
from portal.people.models import Patient
from portal.web import ANY_ROLE, render, requires

bp = Blueprint("people", __name__)


@bp.get("/patients")
@requires(*ANY_ROLE)
def patients():
    q = request.args.get("q", "").strip()[:100]
    stmt = select(Patient).where(Patient.practice_id == g.practice.id)
    if q:
        like = f"%{q.lower()}%"
        stmt = stmt.where(or_(func.lower(Patient.last_name).like(like), func.lower(Patient.first_name).like(like),
                              func.lower(Patient.chart_number) == q.lower()))
    rows = db.session.scalars(stmt.order_by(Patient.last_name, Patient.first_name).limit(200)).all()
    return render("people/patients.html", "rows", patients=rows, q=q)
