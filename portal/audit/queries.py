"""Reading the audit trail: filters for the page and a CSV export safe from formula injection."""
from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import select

from portal.audit.models import AuditEvent
from portal.extensions import db

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "|", "%")


def csv_safe(value: object) -> str:
    """OWASP's advice for CSV injection: a cell a spreadsheet would read as a formula gets a
    leading apostrophe."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


@dataclass
class AuditFilters:
    action: str = ""
    actor: str = ""
    entity: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None

    @classmethod
    def from_args(cls, args) -> AuditFilters:
        def day(name):
            try:
                return dt.date.fromisoformat(args.get(name, ""))
            except ValueError:
                return None

        return cls(action=args.get("action", "").strip()[:64], actor=args.get("actor", "").strip()[:100],
                   entity=args.get("entity", "").strip()[:64], date_from=day("from"), date_to=day("to"))

    def as_args(self) -> dict:
        args = {"action": self.action, "actor": self.actor, "entity": self.entity,
                "from": self.date_from.isoformat() if self.date_from else "",
                "to": self.date_to.isoformat() if self.date_to else ""}
        return {k: v for k, v in args.items() if v}


def query(practice_id: int, f: AuditFilters):
    stmt = select(AuditEvent).where(AuditEvent.practice_id == practice_id)
    if f.action:
        stmt = stmt.where(AuditEvent.action.startswith(f.action))
    if f.actor:
        stmt = stmt.where(AuditEvent.actor_label.ilike(f"%{f.actor}%"))
    if f.entity:
        kind, _, ident = f.entity.partition(":")
        stmt = stmt.where(AuditEvent.entity_type == kind)
        if ident:
            stmt = stmt.where(AuditEvent.entity_id == ident)
    if f.date_from:
        stmt = stmt.where(AuditEvent.occurred_at >= dt.datetime.combine(f.date_from, dt.time()))
    if f.date_to:
        stmt = stmt.where(AuditEvent.occurred_at < dt.datetime.combine(f.date_to + dt.timedelta(days=1), dt.time()))
    return stmt.order_by(AuditEvent.seq.desc())


def page(practice_id: int, f: AuditFilters, before_seq: int | None, size: int = 100) -> list[AuditEvent]:
    stmt = query(practice_id, f)
    if before_seq:
        stmt = stmt.where(AuditEvent.seq < before_seq)
    return list(db.session.scalars(stmt.limit(size)))


CSV_COLUMNS = ["seq", "occurred_at", "actor_type", "actor_id", "actor_label", "on_behalf_of", "action",
               "entity_type", "entity_id", "before", "after", "source", "ip", "outcome", "correlation_id",
               "hash"]


def export_csv(practice_id: int, f: AuditFilters) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in db.session.scalars(query(practice_id, f).execution_options(yield_per=500)):
        writer.writerow([csv_safe(getattr(row, c).isoformat() + "Z" if c == "occurred_at" else getattr(row, c))
                         for c in CSV_COLUMNS])
        if buffer.tell() > 64_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
