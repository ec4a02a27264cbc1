"""The board's queries: a constant number of statements whatever the number of cases, and for the
board itself a cost that follows the cards shown rather than the cases open."""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field

from sqlalchemy import (
    Date, DateTime, Integer, String, and_, bindparam, column, func, or_, select, true, union_all, values,
)
from sqlalchemy.orm import joinedload, selectinload

from portal.audit.models import AuditEvent
from portal.board.cards import CardView, card_select, load_cards
from portal.cases.lifecycle import TRANSITIONS
from portal.cases.models import LabCase
from portal.cases.status import Status
from portal.extensions import db
from portal.people.models import Appointment, Patient

COLUMNS = [
    Status.DRAFT, Status.SENT, Status.ACKNOWLEDGED, Status.IN_PRODUCTION, Status.DISPATCHED,
    Status.RECEIVED, Status.FITTED, Status.ON_HOLD, Status.RESCAN,
]
PHASES = [
    ("request", [Status.DRAFT, Status.SENT]),
    ("in progress", [Status.ACKNOWLEDGED, Status.IN_PRODUCTION]),
    ("delivery", [Status.DISPATCHED, Status.RECEIVED]),
    ("fit", [Status.FITTED]),
    ("exceptions", [Status.ON_HOLD]),  # On hold and Returned for rescan share one stacked column
]
# Dropping into these columns asks for a reason first.
NEEDS_REASON = frozenset(
    to for targets in TRANSITIONS.values() for to, rule in targets.items() if rule.needs_reason
)
FITTED_SHOWN_DAYS = 14
DUE_WINDOWS = {"overdue": "Overdue", "today": "Due today", "week": "Due in 7 days", "fortnight": "Due in 14 days"}
# How the cards of each column are ordered ("" is the default: due date).
SORTS = {"": "Due date", "seat": "Seat date", "age": "Oldest first"}
NO_LAB = "none"  # lab=none: the cases no lab has been chosen for yet


@dataclass
class Filters:
    lab_id: int | None = None
    no_lab: bool = False
    provider_id: int | None = None
    due: str = ""
    origin: str = ""
    risk: bool = False
    q: str = ""
    sort: str = ""

    @classmethod
    def from_args(cls, args) -> Filters:
        return cls(
            lab_id=args.get("lab", type=int), no_lab=args.get("lab") == NO_LAB,
            provider_id=args.get("provider", type=int),
            due=args.get("due", "") if args.get("due", "") in DUE_WINDOWS else "",
            origin=args.get("origin", "")[:20], risk=args.get("risk") in ("1", "on", "true"),
            q=args.get("q", "").strip()[:100],
            sort=args.get("sort", "") if args.get("sort", "") in SORTS else "",
        )

    def as_args(self) -> dict:
        args = {"lab": NO_LAB if self.no_lab else self.lab_id, "provider": self.provider_id, "due": self.due,
                "origin": self.origin, "risk": "1" if self.risk else None, "q": self.q, "sort": self.sort}
        return {k: v for k, v in args.items() if v}

    @property
    def active(self) -> bool:
        """Whether the filters leave cases out (the order alone does not)."""
        return any(k != "sort" for k in self.as_args())


@dataclass
class Column:
    status: Status
    count: int = 0
    cards: list[CardView] = field(default_factory=list)

    @property
    def has_more(self) -> bool:
        return self.count > len(self.cards)

    @property
    def needs_reason(self) -> bool:
        return self.status in NEEDS_REASON


def _statuses(f: Filters) -> tuple[Status, ...]:
    """The columns that can hold cases under these filters, in board order. The due windows only
    concern work still to come back, so the other columns stay empty without a query."""
    if f.due == "overdue":
        return tuple(s for s in COLUMNS if s in Status.awaiting_lab())
    if f.due:
        return tuple(s for s in COLUMNS if s in Status.awaiting_lab() | {Status.DRAFT})
    return tuple(COLUMNS)


def _shape(f: Filters) -> tuple[frozenset[str], str, str]:
    """Which filters are set, the due window and the order: what the board's statements differ by."""
    on = {"lab": f.lab_id, "no_lab": f.no_lab, "provider": f.provider_id, "origin": f.origin, "risk": f.risk,
          "q": f.q}
    return frozenset(name for name, value in on.items() if value), f.due, f.sort


def _params(practice_id: int, f: Filters, today: dt.date) -> dict:
    """The values the board's statements are run with."""
    params = {"practice_id": practice_id}
    if Status.FITTED in _statuses(f):
        params["fitted_since"] = dt.datetime.combine(today - dt.timedelta(days=FITTED_SHOWN_DAYS), dt.time())
    if f.lab_id:
        params["lab_id"] = f.lab_id
    if f.provider_id:
        params["provider_id"] = f.provider_id
    if f.origin:
        params["origin"] = f.origin
    if f.due:
        params["due_day"] = today + dt.timedelta(days={"week": 7, "fortnight": 14}.get(f.due, 0))
    if f.q:
        params["like"], params["q"] = f"%{f.q.lower()}%", f.q.lower()
    return params


def _conditions(on: frozenset[str], due: str) -> list:
    """The practice and the board's filters, as bound parameters (see _params); a column's own
    condition (its status, and for Fitted the last two weeks) is added per column."""
    conds = [LabCase.practice_id == bindparam("practice_id")]
    if "lab" in on:
        conds.append(LabCase.lab_id == bindparam("lab_id"))
    if "no_lab" in on:
        conds.append(LabCase.lab_id.is_(None))
    if "provider" in on:
        conds.append(LabCase.provider_id == bindparam("provider_id"))
    if "origin" in on:
        conds.append(LabCase.origin == bindparam("origin"))
    if "risk" in on:
        conds.append(LabCase.seat_risk.is_(True))
    expected = func.coalesce(LabCase.lab_eta, LabCase.due_date)
    due_day = bindparam("due_day", type_=Date)
    if due == "overdue":
        conds.append(expected < due_day)
    elif due == "today":
        conds.append(expected == due_day)
    elif due:
        conds.append(expected <= due_day)
    if "q" in on:
        like = bindparam("like", type_=String)
        # A CTE: every column tests its cases against the matching patients, and the database
        # looks the patients up once per statement instead of once per column.
        matching = select(Patient.id).where(
            Patient.practice_id == bindparam("practice_id"),
            or_(func.lower(Patient.last_name + " " + Patient.first_name).like(like),
                func.lower(Patient.first_name + " " + Patient.last_name).like(like),
                func.lower(Patient.chart_number) == bindparam("q", type_=String)),
        ).cte("matching_patients")
        conds.append(or_(func.lower(LabCase.number).like(like), LabCase.patient_id.in_(select(matching.c.id))))
    return conds


def _recently_fitted():
    return LabCase.fitted_at >= bindparam("fitted_since", type_=DateTime)


def _in_column(status: Status) -> list:
    """What puts a case in `status`'s column: its status; a fitted case stays two weeks."""
    if status == Status.FITTED:
        return [LabCase.status == status, _recently_fitted()]
    return [LabCase.status == status]


def _order(sort: str = ""):
    """A column's order (see SORTS), deterministic: ties go by due date, then by case id.

    "seat": the seat appointment, cases without one last (the cases' ids must be selected with
    _ids(), which joins the appointment). "age": the oldest case first. Both sort the column's
    cases (a few hundred at most); the default order reads an index:

    Due date, cases without one last, then the case id. (The
    same order as `due_date IS NULL, due_date, id`, which no index can serve.) Within one status
    it is the order of the index ix_lab_case_board (practice_id, status, due_date) on SQLite and
    PostgreSQL alike, so `ORDER BY ... LIMIT n` reads about n index entries instead of sorting
    the column: SQLite keeps the rowid, the id, after due_date in the index and reads NULLS LAST
    from it in two passes; PostgreSQL's index puts NULLs last and it sorts only the cases that
    share the last due date read (an incremental sort)."""
    due = (LabCase.due_date.asc().nulls_last(), LabCase.id)
    if sort == "seat":
        return (Appointment.starts_at.asc().nulls_last(), *due)
    if sort == "age":
        return (LabCase.created_at, LabCase.id)
    return due


def _ids(sort: str):
    """SELECT the cases' ids, joined to what their order needs."""
    stmt = select(LabCase.id)
    if sort == "seat":
        stmt = stmt.outerjoin(Appointment, Appointment.id == LabCase.seat_appointment_id)
    return stmt


def _shown_order(shown, sort: str):
    """_order() over the columns of card_select() rows (PostgreSQL's union of the columns' cards)."""
    due = (shown.c.due_date.asc().nulls_last(), shown.c.id)
    if sort == "seat":
        return (shown.c.seat_at.asc().nulls_last(), *due)
    if sort == "age":
        return (shown.c.created_at, shown.c.id)
    return due


def card_query():
    return select(LabCase).options(
        joinedload(LabCase.patient), joinedload(LabCase.lab),
        joinedload(LabCase.seat_appointment), selectinload(LabCase.items),
    )


@functools.lru_cache(maxsize=256)
def _board_statements(dialect: str, on: frozenset[str], due: str, sort: str = ""):
    """The board's two statements for one shape of filters (see _shape), built once and kept: a
    request only binds its values (see _params). Building and keying a statement this size costs
    more than running it on a small board.

    counts: one grouped COUNT. The Fitted column has its own branch: its two weeks need the row,
    where the other columns are counted from the index alone on an unfiltered board.

    cards: each column's first `per_column` cases by `ORDER BY due_date NULLS LAST, id LIMIT n`,
    which reads the index ix_lab_case_board in order and stops; nothing ranks the open cases, so
    the cost follows the cards shown, not the cases open.
    - PostgreSQL: for each status of a VALUES list, a LATERAL subquery picks the column's ids and
      joins only those to their patient, lab and appointment; Fitted, with its extra condition,
      is a second member of a UNION ALL.
    - SQLite (no LATERAL): a UNION ALL of each column's ids, the cards joined to it. SQLite takes
      no ORDER BY or LIMIT on the members of a compound SELECT, so each member selects from its
      own limited subquery."""
    conds, statuses = _conditions(on, due), _statuses(Filters(due=due))
    plain = [s for s in statuses if s != Status.FITTED]
    counts = select(LabCase.status, func.count()).where(*conds, LabCase.status.in_(plain)).group_by(LabCase.status)
    if Status.FITTED in statuses:
        counts = union_all(counts, select(LabCase.status, func.count()).where(*conds, *_in_column(Status.FITTED))
                           .group_by(LabCase.status))
    per_column = bindparam("per_column", type_=Integer)
    if dialect == "postgresql":
        board_columns = values(column("status", LabCase.status.type), name="board_columns").data(
            [(s,) for s in plain])
        first = (_ids(sort).where(*conds, LabCase.status == board_columns.c.status).order_by(*_order(sort))
                 .limit(per_column).correlate(board_columns).lateral("first"))
        # OFFSET 0 keeps the planner from merging the subquery into the outer query: it joins
        # each column's few cases by primary key, whatever its estimate of the table.
        column_cards = card_select(first).offset(0).correlate(board_columns).lateral("column_cards")
        parts = [select(*column_cards.c).select_from(board_columns).join(column_cards, true())]
        if Status.FITTED in statuses:  # planned on its own: its two weeks are a condition of their own
            parts.append(card_select(_ids(sort).where(*conds, *_in_column(Status.FITTED))
                                     .order_by(*_order(sort)).limit(per_column).subquery("first_fitted")))
        shown = union_all(*parts).subquery("shown")
        cards = select(*shown.c).order_by(*_shown_order(shown, sort))
    else:
        firsts = [_ids(sort).where(*conds, *_in_column(status)).order_by(*_order(sort)).limit(per_column)
                  .subquery(f"first_{status.value}") for status in statuses]
        shown = union_all(*(select(first.c.id) for first in firsts)).subquery("shown")
        cards = card_select(shown).order_by(*_order(sort))
    return counts, cards


@functools.lru_cache(maxsize=256)
def _column_statement(on: frozenset[str], due: str, sort: str, status: Status):
    """A page of one column, in the board's order: the index serves `ORDER BY ... OFFSET LIMIT`
    (the default order)."""
    page = (_ids(sort).where(*_conditions(on, due), *_in_column(status)).order_by(*_order(sort))
            .offset(bindparam("offset", type_=Integer)).limit(bindparam("limit", type_=Integer)).subquery("page"))
    return card_select(page).order_by(*_order(sort))


def load_board(practice_id: int, f: Filters, per_column: int, today: dt.date | None = None) -> list[Column]:
    """Counts per column and the first `per_column` cards of each: three statements in all."""
    params = _params(practice_id, f, today or dt.date.today())
    columns = {s: Column(s) for s in COLUMNS}
    counts, cards = _board_statements(db.engine.dialect.name, *_shape(f))
    for status, count in db.session.execute(counts, params):
        columns[status].count = count
    for card in load_cards(cards, {**params, "per_column": per_column}):
        columns[card.status].cards.append(card)
    return list(columns.values())


def load_column(practice_id: int, status: Status, f: Filters, offset: int, limit: int,
                today: dt.date | None = None) -> list[CardView]:
    """A page of one column for "show more", from `offset`, in the board's order."""
    if status not in _statuses(f):
        return []
    params = _params(practice_id, f, today or dt.date.today())
    return load_cards(_column_statement(*_shape(f), status), {**params, "offset": offset, "limit": limit})


def board_stamp(practice_id: int) -> int:
    """Changes whenever anything on the practice's board may have changed: every change writes
    an audit row (docs/reliability.md A1), so the newest audit sequence number is the board's version."""
    return db.session.scalar(
        select(func.max(AuditEvent.seq)).where(AuditEvent.practice_id == practice_id)
    ) or 0


def risk_list(practice_id: int, today: dt.date | None = None) -> list[LabCase]:
    """Open cases at seat risk or late, soonest seat first."""
    today = today or dt.date.today()
    expected = func.coalesce(LabCase.lab_eta, LabCase.due_date)
    late = and_(LabCase.status.in_(Status.awaiting_lab()), expected < today)
    rows = db.session.scalars(
        card_query().where(LabCase.practice_id == practice_id, LabCase.status.in_(Status.open()),
                           or_(LabCase.seat_risk.is_(True), late))
        .order_by(LabCase.due_date)
    ).unique().all()
    return sorted(rows, key=lambda c: (c.seat_date or dt.date.max, c.due_date or dt.date.max))


@dataclass
class DayView:
    day: dt.date
    due_by_lab: dict[str, list[LabCase]]
    received: list[LabCase]
    seating: list[LabCase]


def day_view(practice_id: int, day: dt.date) -> DayView:
    """Dentrix Ascend's outstanding and received lists: what is due in on `day`, grouped by lab;
    what arrived; and whose work is being seated."""
    expected = func.coalesce(LabCase.lab_eta, LabCase.due_date)
    start, end = dt.datetime.combine(day, dt.time()), dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    due = db.session.scalars(card_query().where(
        LabCase.practice_id == practice_id, expected == day,
        LabCase.status.in_(Status.awaiting_lab() | {Status.DISPATCHED})).order_by(LabCase.id)).unique().all()
    received = db.session.scalars(card_query().where(
        LabCase.practice_id == practice_id, LabCase.received_at >= start, LabCase.received_at < end)
        .order_by(LabCase.received_at)).unique().all()
    seating = db.session.scalars(card_query().join(Appointment, Appointment.id == LabCase.seat_appointment_id).where(
        LabCase.practice_id == practice_id, Appointment.starts_at >= start, Appointment.starts_at < end,
        LabCase.status != Status.CANCELLED).order_by(Appointment.starts_at)).unique().all()
    by_lab: dict[str, list[LabCase]] = {}
    for case in due:
        by_lab.setdefault(case.lab.name if case.lab else "No lab", []).append(case)
    return DayView(day, dict(sorted(by_lab.items())), list(received), list(seating))
