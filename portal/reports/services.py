"""Lab performance for managers: the figures per lab, per service and per month, the cases behind
each figure, and their CSV export. Read-only; a constant number of statements per report.

Definitions (the README's "Reports" section says the same for managers):

- The cases of a report are the practice's cases *sent to a lab* in the date range (by the date of
  their latest send, ``LabCase.sent_at``, which a resend after a rescan moves on), less cancelled
  ones. A case's month is the month it was sent.
- A case's service is its prescription's restoration type. A case with several types (a crown and
  a bridge) counts once under each in the per-service table, and once in every other figure.
- Turnaround is counted in business days, as the labs' own turnaround is: the weekdays after the
  send up to and including the day of dispatch (sent -> dispatched) or of check-in at the practice
  (sent -> received), skipping the practice's closed days. Median and 90th percentile by linear
  interpolation (see :mod:`portal.reports.stats`), over the cases that have got that far.
- On time against the due date: received on or before the due date. Against the seat
  appointment: received on or before the day of the case's seat appointment. A case not received
  yet counts as late once that day has passed and is left out until then, as is a case without
  a due date or a seat appointment: each rate says how many cases it is out of.
- Remake rate: the share of the report's cases that were remade (a remake case, not cancelled,
  links back to them), by the reason and the payer of their first remake. The remake belongs to
  the lab and service of the work that had to be remade.
- Fees: the sum and the average of the cases' fees, over the cases that have one (a remake the
  lab pays for has a fee of 0).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import select

from portal.audit.queries import csv_safe
from portal.cases.catalog import REMAKE_PAYERS, REMAKE_REASONS, RESTORATIONS
from portal.cases.status import Status
from portal.extensions import db
from portal.labs.models import Lab
from portal.people.models import Appointment
from portal.practices.models import Practice
from portal.reports import sql
from portal.reports.stats import median, percentile

DEFAULT_MONTHS = 6
MAX_MONTHS = 36
NO_LAB = "No lab recorded"


def months_back(day: dt.date, months: int) -> dt.date:
    """The first day of the month `months` before `day`'s month."""
    index = day.year * 12 + day.month - 1 - months
    return dt.date(index // 12, index % 12 + 1, 1)


def month_key(day: dt.date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def month_label(key: str) -> str:
    return dt.date.fromisoformat(key + "-01").strftime("%b %Y")


# -- filters ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReportFilters:
    """What the manager asked for: a range of send dates, and optionally one lab and one service."""

    date_from: dt.date
    date_to: dt.date
    lab_id: int | None = None
    service: str = ""

    @classmethod
    def default(cls, today: dt.date) -> ReportFilters:
        """The last six months: this month so far and the five before it."""
        return cls(months_back(today, DEFAULT_MONTHS - 1), today)

    @classmethod
    def parse(cls, args: Mapping, today: dt.date) -> tuple[ReportFilters, dict[str, str]]:
        """The filters from a query string, and a message per field that could not be read (the
        default stands in for it)."""
        default = cls.default(today)
        errors: dict[str, str] = {}

        def day(name: str, fallback: dt.date) -> dt.date:
            text = (args.get(name) or "").strip()
            if not text:
                return fallback
            try:
                return dt.date.fromisoformat(text)
            except ValueError:
                errors[name] = "Enter a date as YYYY-MM-DD."
                return fallback

        date_from, date_to = day("from", default.date_from), day("to", default.date_to)
        if date_from > date_to:
            errors["to"] = "The end of the range is before its start."
            date_from, date_to = default.date_from, default.date_to
        elif months_between(date_from, date_to) > MAX_MONTHS:
            errors["from"] = f"Choose at most {MAX_MONTHS} months."
            date_from = months_back(date_to, MAX_MONTHS - 1)
        lab_id = None
        lab_text = (args.get("lab") or "").strip()
        if lab_text:
            try:
                lab_id = int(lab_text)
            except ValueError:
                errors["lab"] = "Choose a lab from the list."
        service = _one_of(args, "service", RESTORATIONS, "Choose a service from the list.", errors)
        return cls(date_from, date_to, lab_id, service), errors

    def as_args(self) -> dict:
        args = {"from": self.date_from.isoformat(), "to": self.date_to.isoformat(),
                "lab": self.lab_id, "service": self.service}
        return {k: v for k, v in args.items() if v}

    def month_keys(self) -> list[str]:
        keys, day = [], dt.date(self.date_from.year, self.date_from.month, 1)
        while day <= self.date_to:
            keys.append(month_key(day))
            day = months_back(day, -1)
        return keys


@dataclass(frozen=True)
class OrganisationFilters(ReportFilters):
    """The DSO view's filters: the report's, and optionally one of the organisation's practices."""

    practice_id: int | None = None

    @classmethod
    def parse(cls, args: Mapping, today: dt.date) -> tuple[OrganisationFilters, dict[str, str]]:
        base, errors = ReportFilters.parse(args, today)
        practice_id = None
        text = (args.get("practice") or "").strip()
        if text:
            try:
                practice_id = int(text)
            except ValueError:
                errors["practice"] = "Choose a practice from the list."
        return cls(base.date_from, base.date_to, base.lab_id, base.service, practice_id), errors

    def as_args(self) -> dict:
        return {**super().as_args(), **({"practice": self.practice_id} if self.practice_id else {})}


def _one_of(args: Mapping, name: str, allowed, message: str, errors: dict[str, str]) -> str:
    """The query-string value `name` if it is one of `allowed`, else "" (with `message` when it was
    given but is not allowed)."""
    value = (args.get(name) or "").strip()
    if value and value not in allowed:
        errors[name] = message
        return ""
    return value


def months_between(start: dt.date, end: dt.date) -> int:
    """How many calendar months the range touches (1 for a range inside one month)."""
    return (end.year - start.year) * 12 + end.month - start.month + 1


@dataclass(frozen=True)
class Drill:
    """Which cases behind a figure to list: a month, and late, remade, a remake reason or payer."""

    month: str = ""
    show: str = ""  # "", late_due, late_seat, remade
    reason: str = ""
    payer: str = ""

    SHOWS = {"late_due": "late against the due date", "late_seat": "late for the seat appointment",
             "remade": "remade"}

    @classmethod
    def parse(cls, args: Mapping, filters: ReportFilters) -> tuple[Drill, dict[str, str]]:
        errors: dict[str, str] = {}
        month = _one_of(args, "month", filters.month_keys(), "That month is outside the date range.", errors)
        show = _one_of(args, "show", cls.SHOWS, "Unknown figure.", errors)
        reason = _one_of(args, "reason", REMAKE_REASONS, "Unknown remake reason.", errors)
        payer = _one_of(args, "payer", REMAKE_PAYERS, "Unknown payer.", errors)
        return cls(month, show, reason, payer), errors

    def as_args(self) -> dict:
        args = {"month": self.month, "show": self.show, "reason": self.reason, "payer": self.payer}
        return {k: v for k, v in args.items() if v}

    def keeps(self, case: CaseFacts) -> bool:
        if self.month and case.month != self.month:
            return False
        if self.show == "late_due" and case.on_time_due is not False:
            return False
        if self.show == "late_seat" and case.on_time_seat is not False:
            return False
        if (self.show == "remade" or self.reason or self.payer) and case.remake is None:
            return False
        if self.reason and case.remake.reason != self.reason:
            return False
        return not (self.payer and case.remake.payer != self.payer)

    def describe(self) -> list[str]:
        parts = []
        if self.month:
            parts.append(f"sent in {month_label(self.month)}")
        if self.show:
            parts.append(self.SHOWS[self.show])
        if self.reason:
            parts.append(f"remade for {REMAKE_REASONS[self.reason].lower()}")
        if self.payer:
            parts.append(f"remake paid by the {REMAKE_PAYERS[self.payer].lower()}")
        return parts


@dataclass(frozen=True)
class Page:
    """Which page of a list of cases: `size` at a time."""

    number: int = 1
    size: int = 100

    @classmethod
    def parse(cls, args: Mapping, errors: dict[str, str]) -> Page:
        text = (args.get("page") or "").strip()
        if not text:
            return cls()
        if not text.isdigit() or int(text) < 1:
            errors["page"] = "Choose a page from the list."
            return cls()
        return cls(int(text))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    def last(self, total: int) -> int:
        return max(1, -(-total // self.size))


# -- the cases and their facts ------------------------------------------------------------------------

@dataclass(frozen=True)
class RemakeFacts:
    case_id: int
    number: str
    reason: str
    payer: str


@dataclass
class CaseFacts:
    """One case of a report, with what the figures are made of."""

    id: int
    number: str
    patient: str
    lab_id: int | None
    lab_name: str
    status: Status
    sent_at: dt.datetime
    dispatched_at: dt.datetime | None
    received_at: dt.datetime | None
    due_date: dt.date | None
    seat_date: dt.date | None
    fee: Decimal | None
    remake_of_id: int | None
    services: tuple[str, ...] = ()
    remake: RemakeFacts | None = None
    to_dispatch: int | None = None  # business days sent -> dispatched
    to_receive: int | None = None  # business days sent -> received
    on_time_due: bool | None = None  # None: not known yet, or no due date
    on_time_seat: bool | None = None  # None: not known yet, or no seat appointment
    practice_id: int | None = None
    practice_name: str = ""

    @property
    def month(self) -> str:
        return month_key(self.sent_at.date())

    @property
    def service_labels(self) -> str:
        return ", ".join(RESTORATIONS.get(s, s) for s in self.services)


def _on_time(received: dt.datetime | None, deadline: dt.date | None, today: dt.date) -> bool | None:
    if deadline is None:
        return None
    if received is not None:
        return received.date() <= deadline
    return False if today > deadline else None


def load_cases(practice_id, filters: ReportFilters, today: dt.date | None = None, drill: Drill | None = None, *,
               limit: int | None = None, offset: int = 0) -> list[CaseFacts]:
    """The report's cases (those behind `drill`'s figure, a page of them with `limit`) with their
    facts, in send order: two statements whatever the number of cases or labs. `practice_id` is
    one practice's id or a select of ids (an organisation's practices)."""
    return load_page(practice_id, filters, today, drill, limit=limit, offset=offset)[0]


def load_page(practice_id, filters: ReportFilters, today: dt.date | None = None, drill: Drill | None = None, *,
              limit: int | None = None, offset: int = 0) -> tuple[list[CaseFacts], int]:
    """(the cases, how many there are in all): see load_cases."""
    today = today or dt.date.today()
    rows, total = sql.case_rows(practice_id, filters, drill or Drill(), today, limit=limit, offset=offset)
    services = sql.services_of(row["case_id"] for row in rows)
    cases = []
    for row in rows:
        remake = None
        if row["remake_id"] is not None:
            remake = RemakeFacts(row["remake_id"], row["remake_number"], row["remake_reason"], row["remake_payer"])
        cases.append(CaseFacts(
            id=row["case_id"], number=row["number"], patient=f"{row['last_name']}, {row['first_name']}",
            lab_id=row["lab_id"], lab_name=row["lab_name"] or NO_LAB, status=row["status"], sent_at=row["sent_at"],
            dispatched_at=row["dispatched_at"], received_at=row["received_at"], due_date=row["due_date"],
            seat_date=_as_date(row["seat_date"]), fee=row["fee"], remake_of_id=row["remake_of_id"],
            services=tuple(sorted(services.get(row["case_id"], ()), key=_service_order)), remake=remake,
            to_dispatch=row["d_dispatch"], to_receive=row["d_receive"],
            on_time_due=_state(row["due_state"]), on_time_seat=_state(row["seat_state"]),
            practice_id=row["practice_id"], practice_name=row["practice_name"],
        ))
    return cases, total


def _as_date(value) -> dt.date | None:
    """A day the database computed: a date on PostgreSQL, 'YYYY-MM-DD' text on SQLite."""
    if value is None or isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(value)


def _state(value) -> bool | None:
    return None if value is None else bool(value)


_SERVICE_ORDER = {code: n for n, code in enumerate(RESTORATIONS)}


def _service_order(code: str) -> int:
    return _SERVICE_ORDER.get(code, len(_SERVICE_ORDER))


# -- figures ----------------------------------------------------------------------------------------

@dataclass
class Figures:
    """Every figure of the report for one group of cases (a lab, a service, a month, or all)."""

    label: str
    link: dict | None  # the query arguments that list this group's cases ({} for all, None for none)
    cases: int = 0
    dispatch_median: float | None = None
    dispatch_p90: float | None = None
    dispatch_count: int = 0
    receive_median: float | None = None
    receive_p90: float | None = None
    receive_count: int = 0
    due_on_time: int = 0
    due_known: int = 0
    seat_on_time: int = 0
    seat_known: int = 0
    remade: int = 0
    fees_total: Decimal = Decimal("0")
    fees_count: int = 0
    lab_id: int | None = None  # the group's lab, for a lab's row
    practice_id: int | None = None  # the group's practice, across an organisation

    @property
    def due_rate(self) -> float | None:
        return self.due_on_time / self.due_known if self.due_known else None

    @property
    def seat_rate(self) -> float | None:
        return self.seat_on_time / self.seat_known if self.seat_known else None

    @property
    def remake_rate(self) -> float | None:
        return self.remade / self.cases if self.cases else None

    @property
    def fees_average(self) -> Decimal | None:
        if not self.fees_count:
            return None
        return (self.fees_total / self.fees_count).quantize(Decimal("0.01"))

    @property
    def due_late(self) -> int:
        return self.due_known - self.due_on_time

    @property
    def seat_late(self) -> int:
        return self.seat_known - self.seat_on_time


def figures(cases: Iterable[CaseFacts], label: str, link: dict | None) -> Figures:
    cases = list(cases)
    to_dispatch = [c.to_dispatch for c in cases if c.to_dispatch is not None]
    to_receive = [c.to_receive for c in cases if c.to_receive is not None]
    fees = [c.fee for c in cases if c.fee is not None]
    return Figures(
        label=label, link=link, cases=len(cases),
        dispatch_median=median(to_dispatch), dispatch_p90=percentile(to_dispatch, 0.9),
        dispatch_count=len(to_dispatch),
        receive_median=median(to_receive), receive_p90=percentile(to_receive, 0.9),
        receive_count=len(to_receive),
        due_on_time=sum(c.on_time_due is True for c in cases),
        due_known=sum(c.on_time_due is not None for c in cases),
        seat_on_time=sum(c.on_time_seat is True for c in cases),
        seat_known=sum(c.on_time_seat is not None for c in cases),
        remade=sum(c.remake is not None for c in cases),
        fees_total=sum(fees, Decimal("0")), fees_count=len(fees),
    )


@dataclass
class RemakeRow:
    reason: str
    label: str
    count: int
    share: float | None  # of all the report's cases
    by_payer: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    filters: ReportFilters
    total: Figures
    by_lab: list[Figures]
    by_service: list[Figures]
    by_month: list[Figures]
    remakes: list[RemakeRow]

    @property
    def empty(self) -> bool:
        return self.total.cases == 0


def build_report(practice_id, filters: ReportFilters, today: dt.date | None = None,
                 lab_names: Mapping[int, str] | None = None, *, percentiles: str | None = None) -> Report:
    """The report, its figures computed in the database (portal/reports/sql.py): one statement
    (and a SET LOCAL before it on PostgreSQL), plus one for the labs' names when `lab_names` is
    not given."""
    groups = sql.figures(practice_id, filters, today or dt.date.today(), percentiles=percentiles)
    return _report(groups, filters, lab_names)


@dataclass
class OrganisationReport:
    """The DSO view: the report across the organisation's practices, and each practice's own
    figures and its labs' side by side."""

    report: Report
    practices: list[Figures]  # one per practice of the organisation, with or without cases
    practice_labs: dict[int, list[Figures]]  # practice id -> its labs' figures
    labs: list[tuple[int | None, str]]  # the labs any practice used, by name: the matrix's columns

    def cell(self, practice_id: int, lab_id: int | None) -> Figures | None:
        return next((f for f in self.practice_labs.get(practice_id, []) if f.lab_id == lab_id), None)

    def best_lab(self, practice_id: int) -> int | None:
        """The lab that brought this practice's work back soonest (median sent -> received, then
        the 90th percentile), among those with a figure."""
        ranked = [f for f in self.practice_labs.get(practice_id, []) if f.receive_median is not None]
        if len(ranked) < 2:
            return None
        return min(ranked, key=lambda f: (f.receive_median, f.receive_p90, f.label.lower())).lab_id


def build_organisation_report(organization_id: int, practices: list, filters: ReportFilters,
                              today: dt.date | None = None, lab_names: Mapping[int, str] | None = None,
                              *, percentiles: str | None = None) -> OrganisationReport:
    """The DSO view's figures for `practices` (the organisation's, by name): one statement (and a
    SET LOCAL before it on PostgreSQL) whatever the number of practices, labs or cases."""
    # The practices' ids as a list, not a subquery: the planner then knows which rows it reads.
    groups = sql.figures([p.id for p in practices], filters, today or dt.date.today(),
                         across=True, percentiles=percentiles)
    report = _report(groups, filters, lab_names)
    names = _lab_names(groups, lab_names)
    by_practice, practice_labs, used = [], {}, {}
    for practice in practices:
        key = str(practice.id)
        found = groups.get(("practice", key, None))
        by_practice.append(_figures(found, practice.name, {"practice": practice.id}, practice_id=practice.id))
        mine = []
        for (kind, part, lab_key), group in groups.items():
            if kind == "practice_lab" and part == key:
                lab_id = int(lab_key) if lab_key is not None else None
                name = names.get(lab_id, NO_LAB)
                used[lab_id] = name
                link = {"practice": practice.id, "lab": lab_id} if lab_id else None
                mine.append(_figures(group, name, link, lab_id=lab_id, practice_id=practice.id))
        practice_labs[practice.id] = sorted(mine, key=lambda f: f.label.lower())
    labs = sorted(used.items(), key=lambda item: item[1].lower())
    return OrganisationReport(report, by_practice, practice_labs, labs)


def _lab_names(groups, lab_names: Mapping[int, str] | None) -> dict[int | None, str]:
    ids = {int(key) for (kind, _, key) in groups if kind in ("lab", "practice_lab") and key is not None}
    names = dict(lab_names or {})
    missing = ids - set(names)
    if missing:
        names.update(db.session.execute(select(Lab.id, Lab.name).where(Lab.id.in_(missing))).tuples().all())
    return names


def _figures(group, label: str, link: dict | None, **more) -> Figures:
    if group is None:
        return Figures(label=label, link=link, **more)
    return Figures(
        label=label, link=link, cases=group.cases,
        dispatch_median=group.dispatch_median, dispatch_p90=group.dispatch_p90, dispatch_count=group.dispatch_count,
        receive_median=group.receive_median, receive_p90=group.receive_p90, receive_count=group.receive_count,
        due_on_time=group.due_on_time, due_known=group.due_known, seat_on_time=group.seat_on_time,
        seat_known=group.seat_known, remade=group.remade, fees_total=group.fees_total,
        fees_count=group.fees_count, **more)


def _report(groups, filters: ReportFilters, lab_names: Mapping[int, str] | None) -> Report:
    names = _lab_names(groups, lab_names)
    total = _figures(groups.get(("all", None, None)), "All cases", {})
    by_lab = sorted(
        (_figures(group, names.get(int(key), NO_LAB) if key is not None else NO_LAB,
                  {"lab": int(key)} if key is not None else None, lab_id=int(key) if key is not None else None)
         for (kind, _, key), group in groups.items() if kind == "lab"),
        key=lambda f: f.label.lower())
    by_service = [_figures(group, RESTORATIONS.get(key, key), {"service": key})
                  for (kind, _, key), group in sorted(groups.items(), key=lambda item: _service_order(item[0][2] or ""))
                  if kind == "service"]
    by_month = [_figures(groups.get(("month", None, key)), month_label(key), {"month": key})
                for key in sorted(set(filters.month_keys()) | {k for (kind, _, k) in groups if kind == "month"})]
    remakes = []
    for reason, label in REMAKE_REASONS.items():
        by_payer = {p: groups[("remake", p, reason)].cases if ("remake", p, reason) in groups else 0
                    for p in REMAKE_PAYERS}
        count = sum(by_payer.values()) + sum(g.cases for (kind, p, k), g in groups.items()
                                              if kind == "remake" and k == reason and p not in REMAKE_PAYERS)
        if count:
            remakes.append(RemakeRow(reason, label, count, count / total.cases, by_payer))
    return Report(filters, total, by_lab, by_service, by_month, remakes)


def summarise(cases: list[CaseFacts], filters: ReportFilters) -> Report:
    """The report counted in Python from the cases' facts: the reference the SQL figures are
    tested against (tests/reports/test_sql_figures.py), not what the pages use."""
    labs: dict[int | None, list[CaseFacts]] = {}
    services: dict[str, list[CaseFacts]] = {}
    months: dict[str, list[CaseFacts]] = {key: [] for key in filters.month_keys()}
    for case in cases:
        labs.setdefault(case.lab_id, []).append(case)
        for service in case.services:
            if not filters.service or service == filters.service:
                services.setdefault(service, []).append(case)
        months.setdefault(case.month, []).append(case)
    by_lab = sorted(
        (figures(group, group[0].lab_name, {"lab": lab_id} if lab_id else None) for lab_id, group in labs.items()),
        key=lambda f: f.label.lower())
    by_service = [figures(services[s], RESTORATIONS.get(s, s), {"service": s})
                  for s in sorted(services, key=_service_order)]
    by_month = [figures(group, month_label(key), {"month": key}) for key, group in sorted(months.items())]
    total = figures(cases, "All cases", {})
    remade = [c.remake for c in cases if c.remake is not None]
    remakes = []
    for reason, label in REMAKE_REASONS.items():
        mine = [r for r in remade if r.reason == reason]
        if mine:
            remakes.append(RemakeRow(reason, label, len(mine), len(mine) / total.cases,
                                     {p: sum(r.payer == p for r in mine) for p in REMAKE_PAYERS}))
    return Report(filters, total, by_lab, by_service, by_month, remakes)


def select_cases(cases: Iterable[CaseFacts], drill: Drill) -> list[CaseFacts]:
    """The cases behind a figure, by the same facts the figure was counted from."""
    return [c for c in cases if drill.keeps(c)]


def practice_choices(organization_id: int) -> list:
    return list(db.session.scalars(select(Practice).where(Practice.organization_id == organization_id)
                                   .order_by(Practice.name, Practice.id)))


def lab_choices(organization_id: int) -> list[Lab]:
    return list(db.session.scalars(select(Lab).where(Lab.organization_id == organization_id).order_by(Lab.name)))


def next_appointments(practice_id: int, patient_ids: Iterable[int],
                      now: dt.datetime | None = None) -> dict[int, Appointment]:
    """Each patient's next appointment from `now` on (any kind), in one statement: for the
    delay-exceptions list, where a late case meets the patient's next visit."""
    ids = set(patient_ids)
    if not ids:
        return {}
    now = now or dt.datetime.now()
    found: dict[int, Appointment] = {}
    for appt in db.session.scalars(
        select(Appointment).where(Appointment.practice_id == practice_id, Appointment.patient_id.in_(ids),
                                  Appointment.starts_at >= now)
        .order_by(Appointment.patient_id, Appointment.starts_at, Appointment.id)
    ):
        found.setdefault(appt.patient_id, appt)
    return found


# -- formatting and CSV ------------------------------------------------------------------------------

def days(value: float | None) -> str:
    """4 or 4.5: business days to one decimal, without a trailing .0."""
    if value is None:
        return "—"
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.0f}%"


def money(value: Decimal | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def _number(value) -> str:
    """A figure in a CSV cell: empty for none, one decimal at most for days and rates."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}".removesuffix(".0")
    return str(value)


FIGURE_COLUMNS: list[tuple[str, Callable[[Figures], object]]] = [
    ("cases", lambda f: f.cases),
    ("sent_to_dispatched_median_bdays", lambda f: f.dispatch_median),
    ("sent_to_dispatched_p90_bdays", lambda f: f.dispatch_p90),
    ("dispatched_cases", lambda f: f.dispatch_count),
    ("sent_to_received_median_bdays", lambda f: f.receive_median),
    ("sent_to_received_p90_bdays", lambda f: f.receive_p90),
    ("received_cases", lambda f: f.receive_count),
    ("on_time_due", lambda f: f.due_on_time),
    ("due_known", lambda f: f.due_known),
    ("on_time_due_pct", lambda f: None if f.due_rate is None else f.due_rate * 100),
    ("on_time_seat", lambda f: f.seat_on_time),
    ("seat_known", lambda f: f.seat_known),
    ("on_time_seat_pct", lambda f: None if f.seat_rate is None else f.seat_rate * 100),
    ("remade", lambda f: f.remade),
    ("remake_pct", lambda f: None if f.remake_rate is None else f.remake_rate * 100),
    ("fees_total", lambda f: f.fees_total),
    ("fees_average", lambda f: f.fees_average),
    ("cases_with_fee", lambda f: f.fees_count),
]

TABLES = {"labs": "lab", "services": "service", "months": "month", "remakes": "reason", "cases": "case"}
ORGANISATION_TABLES = {**TABLES, "practices": "practice", "practice-labs": "practice"}


def _csv(rows: Iterable[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow([csv_safe(_number(cell)) for cell in row])
    return buffer.getvalue()


def table_csv(report: Report, table: str) -> str:
    """One table of the report as CSV, every cell through the audit export's formula guard."""
    if table == "remakes":
        head = ["reason", "remade", "share_of_cases_pct"] + [f"paid_by_{p}" for p in REMAKE_PAYERS]
        body = [[r.label, r.count, None if r.share is None else r.share * 100]
                + [r.by_payer.get(p, 0) for p in REMAKE_PAYERS] for r in report.remakes]
        return _csv([head, *body])
    groups = {"labs": report.by_lab, "services": report.by_service, "months": report.by_month}[table]
    head = [TABLES[table]] + [name for name, _ in FIGURE_COLUMNS]
    body = [[f.label] + [get(f) for _, get in FIGURE_COLUMNS] for f in [*groups, report.total]]
    return _csv([head, *body])


def organisation_csv(org: OrganisationReport, table: str) -> str:
    """The DSO view's own tables as CSV: its practices, and each practice's labs."""
    head = [name for name, _ in FIGURE_COLUMNS]
    if table == "practices":
        body = [[f.label] + [get(f) for _, get in FIGURE_COLUMNS] for f in [*org.practices, org.report.total]]
        return _csv([["practice", *head], *body])
    names = {f.practice_id: f.label for f in org.practices}
    body = [[names[practice_id], f.label] + [get(f) for _, get in FIGURE_COLUMNS]
            for practice_id, labs in org.practice_labs.items() for f in labs]
    return _csv([["practice", "lab", *head], *body])


CASE_COLUMNS = ["case", "lab", "services", "status", "sent", "dispatched", "received",
                "sent_to_dispatched_bdays", "sent_to_received_bdays", "due", "on_time_due", "seat",
                "on_time_seat", "fee", "remade_as", "remake_reason", "remake_payer"]


def _yes_no(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")


def cases_csv(cases: Iterable[CaseFacts], *, across: bool = False) -> str:
    """The cases behind a figure: case numbers, not patient names (an export leaves the portal);
    `across` an organisation, each case's practice first."""
    return _csv([(["practice"] if across else []) + CASE_COLUMNS, *([
        *([c.practice_name] if across else []), c.number, c.lab_name, c.service_labels, c.status.label, c.sent_at.date().isoformat(),
        c.dispatched_at.date().isoformat() if c.dispatched_at else None,
        c.received_at.date().isoformat() if c.received_at else None,
        c.to_dispatch, c.to_receive, c.due_date.isoformat() if c.due_date else None, _yes_no(c.on_time_due),
        c.seat_date.isoformat() if c.seat_date else None, _yes_no(c.on_time_seat), c.fee,
        c.remake.number if c.remake else None, REMAKE_REASONS.get(c.remake.reason, "") if c.remake else None,
        REMAKE_PAYERS.get(c.remake.payer, "") if c.remake else None,
    ] for c in cases)])
