"""What other features read about an email lab's private links (read-only)."""
from __future__ import annotations

from sqlalchemy import select

from portal.ack.models import AckLink
from portal.extensions import db


def latest_link(case_id: int) -> AckLink | None:
    """The case's newest private link (live, expired or revoked), for the case page."""
    return db.session.scalar(select(AckLink).where(AckLink.case_id == case_id).order_by(AckLink.id.desc()).limit(1))
