"""The report's figures computed in the database, for one practice or across an organisation.

Every figure of :mod:`portal.reports.services` (its docstring has the definitions) comes from one
statement whatever the number of cases, labs, months or practices:

- ``facts`` (a common table expression): one row per case of the report with what the figures
  are made of. The turnaround is the case's stored business days (``sent_to_dispatched_bdays``,
  ``sent_to_received_bdays``, kept by ``lifecycle.move()`` and by the practice's closed days
  changing), so nothing is counted per case in Python.
- Four groupings of those rows (``GROUPING_SETS``): per practice, lab and both spans; per month
  and both spans; per set of services (``LabCase.restorations``, the case's restoration codes)
  and both spans; per first remake's reason and payer. Each is a few hundred to a few thousand
  rows however many cases there are. PostgreSQL makes all four in one pass over the cases (one
  aggregate with ``GROUPING SETS``, the per-case rows never materialised); SQLite groups its
  ``facts`` four times.
- ``expanded``: those rows once per grouping they count in (all, lab, month, service, remake and,
  across an organisation, practice and practice x lab) as (kind, part, key) rows, a set of
  services once under each of its codes; one ``GROUP BY kind, part, key`` sums every count, rate
  and fee of every table.
- Median and 90th percentile (Hyndman-Fan type 7, as :mod:`portal.reports.stats`): the cases per
  business-day value of each group, a window (a running ``SUM`` of those counts) to find the
  values at ranks floor(h) and floor(h) + 1 of h = (n - 1) q, interpolated exactly as
  stats.percentile does (business days are whole numbers, so the counts carry the whole
  distribution). The totals and the ranks come back as the two halves of one ``UNION ALL``.

``percentile_cont`` over one row per case and grouping is the other path on PostgreSQL
(``percentiles="cont"``); tests/reports/test_sql_figures.py holds both to a Python reference, and
bench/reports.py times both (the counts are quicker, so they are the default on both databases).
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import (
    JSON, Date, Float, Integer, String, case, cast, exists, func, literal, null, select, text, true, tuple_, union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.functions import FunctionElement

from portal.cases.lifecycle import Status
from portal.cases.models import CaseItem, LabCase
from portal.extensions import db
from portal.labs.models import Lab
from portal.people.models import Appointment, Patient
from portal.practices.models import Practice

QUANTILES = (0.5, 0.9)
WORK_MEM = "64MB"  # PostgreSQL, for the figures' statement (see _figures_by_counts)


# -- dialect-specific pieces ---------------------------------------------------------------------------

def _sql_function(name: str, doc: str, default: str, sqlite: str, type_=None):
    """A SQL function of one argument written out per dialect: `default` ("{}" stands for the
    argument), `sqlite` on SQLite."""
    cls = type(name, (FunctionElement,), {"__doc__": doc, "inherit_cache": True,
                                          **({"type": type_} if type_ is not None else {})})
    compiles(cls)(lambda element, compiler, **kw: default.format(compiler.process(element.clauses, **kw)))
    compiles(cls, "sqlite")(lambda element, compiler, **kw: sqlite.format(compiler.process(element.clauses, **kw)))
    return cls


day_of = _sql_function("day_of", "The calendar day of a timestamp, comparable with a Date column.",
                       "CAST({} AS DATE)", "date({})", Date())
month_of = _sql_function("month_of", "'YYYY-MM' of a timestamp: the report's month key.",
                         "to_char({}, 'YYYY-MM')", "strftime('%Y-%m', {})", String())
# The month of a timestamp for grouping: PostgreSQL's date_trunc (to_char on every case was about a
# third of a scan of the organisation's cases), SQLite's 'YYYY-MM'; month_text() of it is the key.
month_bucket = _sql_function("month_bucket", "The month of a timestamp, for grouping.",
                             "date_trunc('month', {})", "strftime('%Y-%m', {})")
month_text = _sql_function("month_text", "'YYYY-MM' of a month_bucket().", "to_char({}, 'YYYY-MM')", "{}", String())
# SQLite has no floor without its math functions; CAST truncates there, and truncating is flooring
# for what is never negative.
floor_of = _sql_function("floor_of", "floor() of a non-negative number, as an integer.",
                         "CAST(floor({}) AS INTEGER)", "CAST({} AS INTEGER)", Integer())


def _dialect() -> str:
    return db.session.get_bind().dialect.name


# -- the cases of a report ---------------------------------------------------------------------------

def scope(practice_ids) -> object:
    """The cases' practices: one id, or a list (an organisation's practices)."""
    if isinstance(practice_ids, int):
        return LabCase.practice_id == practice_ids
    return LabCase.practice_id.in_(practice_ids)


def conditions(practice_ids, filters) -> list:
    start = dt.datetime.combine(filters.date_from, dt.time())
    end = dt.datetime.combine(filters.date_to + dt.timedelta(days=1), dt.time())
    found = [scope(practice_ids), LabCase.sent_at >= start, LabCase.sent_at < end, LabCase.status != Status.CANCELLED]
    if filters.lab_id:
        found.append(LabCase.lab_id == filters.lab_id)
    if getattr(filters, "practice_id", None):
        found.append(LabCase.practice_id == filters.practice_id)
    if filters.service:
        item = aliased(CaseItem)
        found.append(exists().where(item.case_id == LabCase.id, item.restoration == filters.service))
    return found


def _on_time(received, deadline, today: dt.date):
    """1 on time, 0 late, NULL not known yet or no deadline (services._on_time, in SQL)."""
    return case(
        (deadline.is_(None), null()),
        (received.is_not(None), case((day_of(received) <= deadline, 1), else_=0)),
        (literal(today, Date) > deadline, 0),
        else_=null())


def first_remakes(practice_ids):
    """Each remade case's first remake that is not cancelled: (original_id, remake_id), and on
    PostgreSQL its remake_reason and remake_payer too. There one DISTINCT ON, which it estimates
    well, so the figures need no second join on lab_case (over an organisation it hashed the whole
    table for that); SQLite joins the remake's row by primary key (facts()), as it looks each case
    up in this grouped subquery by an automatic index (a subquery carrying the remake's columns it
    scanned once per case: 40 s at 100,000 cases)."""
    remake = aliased(LabCase)
    where = [scope_of(remake, practice_ids), remake.remake_of_id.is_not(None), remake.status != Status.CANCELLED]
    if _dialect() == "postgresql":
        return (select(remake.remake_of_id.label("original_id"), remake.id.label("remake_id"),
                       remake.remake_reason, remake.remake_payer)
                .where(*where).distinct(remake.remake_of_id)
                .order_by(remake.remake_of_id, remake.id).subquery("first_remake"))
    return (select(remake.remake_of_id.label("original_id"), func.min(remake.id).label("remake_id"))
            .where(*where).group_by(remake.remake_of_id).subquery("first_remake"))


def scope_of(model, practice_ids):
    if isinstance(practice_ids, int):
        return model.practice_id == practice_ids
    return model.practice_id.in_(practice_ids)


def _first_remake_id(practice_ids):
    """The case's first remake that is not cancelled, looked up per case (ix_lab_case_remake_of_id):
    for the lists of cases, where a drill's filter (late, say) is estimated at a few hundred rows
    and PostgreSQL then nested-loop joined first_remakes() against every case (236 million
    comparisons, 26 s for 53,000 late cases of 100,000)."""
    remake = aliased(LabCase)
    return (select(func.min(remake.id)).where(remake.remake_of_id == LabCase.id, scope_of(remake, practice_ids),
                                             remake.status != Status.CANCELLED)
            .scalar_subquery())


def facts(practice_ids, filters, today: dt.date, *, listing: bool = False):
    """One row per case of the report (see the module's docstring); `listing` adds what the list
    of cases shows."""
    seat = day_of(Appointment.starts_at)
    columns = [
        LabCase.id.label("case_id"), LabCase.practice_id, LabCase.lab_id,
        (month_of if listing else month_bucket)(LabCase.sent_at).label("month"),
        LabCase.sent_to_dispatched_bdays.label("d_dispatch"), LabCase.sent_to_received_bdays.label("d_receive"),
        _on_time(LabCase.received_at, LabCase.due_date, today).label("due_state"),
        _on_time(LabCase.received_at, seat, today).label("seat_state"),
        LabCase.fee,
    ]
    query = (select().select_from(LabCase)
             # a seat appointment is of its case's practice (cases.services checks): scoping the
             # join lets PostgreSQL hash the report's practices' appointments, not every practice's
             .outerjoin(Appointment, (Appointment.id == LabCase.seat_appointment_id)
                        & scope_of(Appointment, practice_ids)))
    if listing:
        remake = aliased(LabCase, name="remake")
        columns += [remake.id.label("remake_id"), remake.remake_reason.label("remake_reason"),
                    remake.remake_payer.label("remake_payer"),
                    LabCase.number, Patient.first_name, Patient.last_name, Lab.name.label("lab_name"),
                    LabCase.status, LabCase.sent_at, LabCase.dispatched_at, LabCase.received_at,
                    LabCase.due_date, seat.label("seat_date"), LabCase.remake_of_id,
                    remake.number.label("remake_number"), Practice.name.label("practice_name")]
        query = (query.outerjoin(remake, remake.id == _first_remake_id(practice_ids))
                 .join(Patient, Patient.id == LabCase.patient_id).outerjoin(Lab, Lab.id == LabCase.lab_id)
                 .join(Practice, Practice.id == LabCase.practice_id))
    else:
        first = first_remakes(practice_ids)
        query = query.outerjoin(first, first.c.original_id == LabCase.id)
        if "remake_reason" in first.c:
            remake = first.c
        else:
            remake = aliased(LabCase, name="remake")
            query = query.outerjoin(remake, remake.id == first.c.remake_id)
        columns += [first.c.remake_id, remake.remake_reason.label("remake_reason"),
                    remake.remake_payer.label("remake_payer"), LabCase.restorations.label("services")]
    return query.add_columns(*columns).where(*conditions(practice_ids, filters))


# -- the figures -------------------------------------------------------------------------------------

@dataclass
class Group:
    """The raw figures of one group: services.Figures is made from it."""

    cases: int = 0
    dispatch_count: int = 0
    receive_count: int = 0
    due_on_time: int = 0
    due_known: int = 0
    seat_on_time: int = 0
    seat_known: int = 0
    remade: int = 0
    fee_cents: int = 0
    fees_count: int = 0
    dispatch_median: float | None = None
    dispatch_p90: float | None = None
    receive_median: float | None = None
    receive_p90: float | None = None

    @property
    def fees_total(self) -> Decimal:
        return Decimal(self.fee_cents).scaleb(-2)


Key = tuple[str, str | None, str | None]  # (kind, part, key)
COUNTS = ("cases", "dispatch_count", "receive_count", "due_on_time", "due_known", "seat_on_time", "seat_known",
          "remade", "fee_cents", "fees_count")
# The groupings every figure is summed from (see _figures_by_counts): the first column of each is
# the one no other grouping has.
GROUPING_SETS = {
    "cases": ("practice_id", "lab_id", "d_dispatch", "d_receive"),  # all, lab, practice, practice x lab
    "months": ("month", "d_dispatch", "d_receive"),
    "services": ("services", "d_dispatch", "d_receive"),  # LabCase.restorations
    "remakes": ("remake_reason", "remake_payer"),
}
SET_COLUMNS = ("practice_id", "lab_id", "month", "services", "d_dispatch", "d_receive", "remake_reason",
               "remake_payer")
MEASURES = ("due_on_time", "due_known", "seat_on_time", "seat_known", "remade", "fee_cents", "fees_count")
PERCENTILES = ("dispatch_median", "dispatch_p90", "receive_median", "receive_p90")


def _text(column):
    return cast(column, String)


def figures(practice_ids, filters, today: dt.date, *, across: bool = False,
            percentiles: str | None = None) -> dict[Key, Group]:
    """Every group's figures: {(kind, part, key): Group}. Kinds: "all", "lab" (key: lab id),
    "month" (key: YYYY-MM), "service" (key: restoration), "remake" (part: payer, key: reason;
    only `cases` counts) and, `across` an organisation, "practice" (part: practice id) and
    "practice_lab" (part: practice id, key: lab id). Ids are strings, None for no lab.
    `percentiles`: "cont" (percentile_cont over every case) or "window" (counts and a window:
    SQLite's only path, and PostgreSQL's default, being the quicker there too; bench/reports.py)."""
    percentiles = percentiles or "window"
    if percentiles == "window":
        return _figures_by_counts(practice_ids, filters, today, across)
    return _figures_by_percentile_cont(practice_ids, filters, today, across)


def _services(base, filters):
    """(case_id, restoration) once per service of each case of `base`."""
    item = aliased(CaseItem)
    # a join and GROUP BY, not IN (SELECT ...) and DISTINCT: PostgreSQL estimated the IN at 200 ids
    # and looked each of 100,000 cases up in the index, then sorted them on disk
    query = (select(item.case_id, item.restoration).select_from(base).join(item, item.case_id == base.c.case_id)
             .group_by(item.case_id, item.restoration))
    if filters.service:
        query = query.where(item.restoration == filters.service)
    return query.subquery("case_service")


def _figures_by_percentile_cont(practice_ids, filters, today, across) -> dict[Key, Group]:
    """One row per case and grouping, aggregated with percentile_cont (PostgreSQL only)."""
    base = facts(practice_ids, filters, today).cte("facts")
    remade = case((base.c.remake_id.is_not(None), 1), else_=0)
    services = _services(base, filters)

    def part(kind, part_, key, *, where=None, service=False):
        query = select(literal(kind, String).label("kind"), _text(part_).label("part"), _text(key).label("key"),
                       base.c.d_dispatch, base.c.d_receive, base.c.due_state, base.c.seat_state,
                       remade.label("remade"), base.c.fee)
        if service:
            query = query.select_from(base).join(services, services.c.case_id == base.c.case_id)
        return query.where(where) if where is not None else query

    parts = [
        part("all", null(), null()), part("lab", null(), base.c.lab_id), part("month", null(), month_text(base.c.month)),
        part("service", null(), services.c.restoration, service=True),
        part("remake", base.c.remake_payer, base.c.remake_reason, where=base.c.remake_id.is_not(None)),
    ]
    if across:
        parts += [part("practice", base.c.practice_id, null()), part("practice_lab", base.c.practice_id, base.c.lab_id)]
    expanded = union_all(*parts).cte("expanded")
    e = expanded.c
    columns = [
        func.count().label("cases"), func.count(e.d_dispatch).label("dispatch_count"),
        func.count(e.d_receive).label("receive_count"),
        func.sum(case((e.due_state == 1, 1), else_=0)).label("due_on_time"),
        func.count(e.due_state).label("due_known"),
        func.sum(case((e.seat_state == 1, 1), else_=0)).label("seat_on_time"),
        func.count(e.seat_state).label("seat_known"),
        func.sum(e.remade).label("remade"),
        func.sum(cast(func.round(e.fee * 100), Integer)).label("fee_cents"),
        func.count(e.fee).label("fees_count"),
    ]
    for name, column in (("dispatch", e.d_dispatch), ("receive", e.d_receive)):
        for q, label in zip(QUANTILES, ("median", "p90"), strict=True):
            columns.append(func.percentile_cont(q).within_group(column).label(f"{name}_{label}"))
    groups: dict[Key, Group] = {}
    for row in db.session.execute(select(e.kind, e.part, e.key, *columns).group_by(e.kind, e.part, e.key)).mappings():
        group = Group(**{name: int(row[name] or 0) for name in COUNTS})
        for name in PERCENTILES:
            setattr(group, name, None if row[name] is None else float(row[name]))
        groups[(row["kind"], row["part"], row["key"])] = group
    return groups


def _figures_by_counts(practice_ids, filters, today, across) -> dict[Key, Group]:
    """One statement on either database. The cases are first counted in four groupings, each a
    few hundred to a few thousand rows however many cases there are (GROUPING_SETS below); every
    figure then sums those rows, and the percentiles come from the counts per business-day value
    with a running sum (see the module's docstring)."""
    postgresql = _dialect() == "postgresql"
    rows = facts(practice_ids, filters, today)

    def measures(source):
        c = source.c
        # PostgreSQL sums the fees as they are (numeric, exact) and scales the few sums; SQLite's
        # numbers are floats, so each fee is rounded to cents first, as before
        fee_cents = (func.sum(c.fee) * 100 if postgresql else func.sum(cast(func.round(c.fee * 100), Integer)))
        return [func.count().label("n"),
                func.count().filter(c.due_state == 1).label("due_on_time"),
                func.count(c.due_state).label("due_known"),
                func.count().filter(c.seat_state == 1).label("seat_on_time"),
                func.count(c.seat_state).label("seat_known"),
                func.count(c.remake_id).label("remade"),
                fee_cents.label("fee_cents"),
                func.count(c.fee).label("fees_count")]

    sets = {}
    if postgresql:
        # One pass over the cases (not materialised: nothing written to disk and read back), every
        # grouping in one aggregate; GROUPING() tells the rows of each apart
        base = rows.subquery("facts")
        c = base.c
        which = func.grouping(*[c[keys[0]] for keys in GROUPING_SETS.values()])
        every = (select(*[c[n] for n in SET_COLUMNS], which.label("grouping"), *measures(base))
                 .group_by(func.grouping_sets(*[tuple_(*[c[n] for n in keys]) for keys in GROUPING_SETS.values()]))
                 .cte("groupings"))
        width = len(GROUPING_SETS)
        for n, name in enumerate(GROUPING_SETS):
            # GROUPING() has a bit per argument, the first the highest: 0 for the set's own column
            mask = (1 << width) - 1 - (1 << (width - 1 - n))
            sets[name] = select(every).where(every.c.grouping == mask).subquery(name)
        elements = func.json_array_elements_text(cast(sets["services"].c.services, JSON)).table_valued("value")
    else:
        base = rows.cte("facts")
        for name, keys in GROUPING_SETS.items():
            columns = [base.c[n] for n in keys]
            sets[name] = select(*columns, *measures(base)).group_by(*columns).cte(name)
        elements = func.json_each(sets["services"].c.services).table_valued("value")
    # a case counts once under each of its services: the few (services, spans) rows are spread
    # over the codes of their JSON array
    by_service = sets["services"]
    service_rows = select(by_service, elements.c.value.label("restoration")).select_from(by_service).join(
        elements, true())
    if filters.service:
        service_rows = service_rows.where(elements.c.value == filters.service)
    service_rows = service_rows.subquery("service_rows")
    sums = ("n", *MEASURES)

    def part(kind, part_, key, source, where=None):
        c = source.c
        spans = [c.d_dispatch, c.d_receive] if "d_dispatch" in c else [null().label("d_dispatch"),
                                                                       null().label("d_receive")]
        query = select(literal(kind, String).label("kind"), _text(part_).label("part"), _text(key).label("key"),
                       *spans, *[c[name] for name in sums])
        return query.where(where) if where is not None else query

    cases, months, remakes = sets["cases"], sets["months"], sets["remakes"]
    parts = [part("all", null(), null(), cases), part("lab", null(), cases.c.lab_id, cases),
             part("month", null(), month_text(months.c.month), months),
             part("service", null(), service_rows.c.restoration, service_rows),
             part("remake", remakes.c.remake_payer, remakes.c.remake_reason, remakes,
                  where=remakes.c.remake_reason.is_not(None))]
    if across:
        parts += [part("practice", cases.c.practice_id, null(), cases),
                  part("practice_lab", cases.c.practice_id, cases.c.lab_id, cases)]
    expanded = union_all(*parts).cte("expanded")
    e = expanded.c
    group_key = (e.kind, e.part, e.key)
    totals = select(
        literal("total", String).label("row"), *group_key, null().label("metric"),
        func.sum(e.n).label("cases"), func.sum(case((e.d_dispatch.is_not(None), e.n), else_=0)).label("dispatch_count"),
        func.sum(case((e.d_receive.is_not(None), e.n), else_=0)).label("receive_count"),
        *[func.sum(e[name]).label(name) for name in sums[1:]],
        null().label("lo0"), null().label("hi0"), null().label("lo1"), null().label("hi1"),
    ).group_by(*group_key)
    hist = union_all(*[
        select(*group_key, literal(metric, String).label("metric"), column.label("d"), func.sum(e.n).label("c"))
        .where(column.is_not(None), e.kind != "remake").group_by(*group_key, column)
        for metric, column in (("dispatch", e.d_dispatch), ("receive", e.d_receive))
    ]).subquery("hist")
    h = hist.c
    window = {"partition_by": [h.kind, h.part, h.key, h.metric]}
    cum = select(h.kind, h.part, h.key, h.metric, h.d, func.sum(h.c).over(**window, order_by=h.d).label("upto"),
                 func.sum(h.c).over(**window).label("total")).subquery("cum")
    picks = []
    for n, q in enumerate(QUANTILES):
        # h = (n - 1) q in double precision, as Python computes it in interpolate()
        low = floor_of(cast(cum.c.total - 1, Float) * q)
        picks += [func.min(case((cum.c.upto > low, cum.c.d))).label(f"lo{n}"),
                  func.min(case((cum.c.upto > low + 1, cum.c.d))).label(f"hi{n}")]
    ranks = select(
        literal("percentile", String).label("row"), cum.c.kind, cum.c.part, cum.c.key, cum.c.metric,
        cum.c.total.label("cases"), *[null().label(name) for name in ("dispatch_count", "receive_count", *sums[1:])],
        *picks,
    ).group_by(cum.c.kind, cum.c.part, cum.c.key, cum.c.metric, cum.c.total)
    if postgresql:
        # The groupings' hash tables: within the default 4 MB PostgreSQL sorts the cases for them
        # instead, on disk (bench/README.md). For this transaction only.
        db.session.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
    groups: dict[Key, Group] = {}
    ranked = []
    for row in db.session.execute(union_all(totals, ranks)).mappings():
        key = (row["kind"], row["part"], row["key"])
        if row["row"] == "total":
            groups[key] = Group(**{name: int(row[name] or 0) for name in COUNTS})
        else:
            ranked.append((key, row))
    for key, row in ranked:
        n = int(row["cases"])
        values = [interpolate(n, q, row[f"lo{i}"], row[f"hi{i}"]) for i, q in enumerate(QUANTILES)]
        setattr(groups[key], f"{row['metric']}_median", values[0])
        setattr(groups[key], f"{row['metric']}_p90", values[1])
    return groups


def interpolate(n: int, q: float, low_value, high_value) -> float:
    """stats.percentile's last step, given the values at ranks floor(h) and floor(h) + 1."""
    h = (n - 1) * q
    low = math.floor(h)
    high_value = low_value if high_value is None else high_value
    return low_value + (h - low) * (high_value - low_value)


# -- the cases behind a figure -----------------------------------------------------------------------

def drill_conditions(rows, drill) -> list:
    found = []
    if drill.month:
        found.append(rows.c.month == drill.month)
    if drill.show == "late_due":
        found.append(rows.c.due_state == 0)
    if drill.show == "late_seat":
        found.append(rows.c.seat_state == 0)
    if drill.show == "remade" or drill.reason or drill.payer:
        found.append(rows.c.remake_id.is_not(None))
    if drill.reason:
        found.append(rows.c.remake_reason == drill.reason)
    if drill.payer:
        found.append(rows.c.remake_payer == drill.payer)
    return found


def case_rows(practice_ids, filters, drill, today: dt.date, *, limit: int | None = None, offset: int = 0):
    """(rows, total): the cases behind a figure in send order, a page of them when `limit` is
    given, with how many there are in all (one statement); then their services (one more)."""
    rows = facts(practice_ids, filters, today, listing=True).subquery("rows")
    query = (select(rows, func.count().over().label("total")).where(*drill_conditions(rows, drill))
             .order_by(rows.c.sent_at, rows.c.case_id))
    if limit is not None:
        query = query.limit(limit).offset(offset)
    found = db.session.execute(query).mappings().all()
    total = found[0]["total"] if found else 0
    if not found and offset:
        total = db.session.scalar(select(func.count()).select_from(rows).where(*drill_conditions(rows, drill)))
    return found, total


def services_of(case_ids: Iterable[int]) -> dict[int, set[str]]:
    ids = list(case_ids)
    found: dict[int, set[str]] = {}
    if not ids:
        return found
    for case_id, restoration in db.session.execute(
            select(CaseItem.case_id, CaseItem.restoration).where(CaseItem.case_id.in_(ids))):
        found.setdefault(case_id, set()).add(restoration)
    return found

