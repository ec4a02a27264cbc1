from __future__ import annotations

from flask import Blueprint, g
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from portal.extensions import db
from portal.labs.models import Lab
from portal.web import ANY_ROLE, render, requires

bp = Blueprint("labs", __name__, url_prefix="/labs")


@bp.get("/")
@requires(*ANY_ROLE)
def index():
    labs = db.session.scalars(
        select(Lab).where(Lab.organization_id == g.practice.organization_id)
        .options(selectinload(Lab.services)).order_by(Lab.name)
    ).all()
    return render("labs/index.html", labs=labs)
