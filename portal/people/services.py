"""Patients, providers and appointments: the rules and SQL behind their forms, and the import of
Open Dental CSV exports. Services flush; the request commits once.

The import reads a file into `ParsedCsv` (`parse_csv`), then one of `import_patients`,
`import_providers` or `import_appointments` applies the rows and returns an `ImportReport`.
A file that can't be read at all raises `UserError` (field "file") before anything is written; a bad row is
rejected with its line number and a reason while the good rows import.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, or_, select

from portal.audit.actor import Actor
from portal.audit.record import record
from portal.cases.models import LabCase
from portal.cases.services import refresh_cases_for_appointment
from portal.errors import UserError
from portal.extensions import db
from portal.people.models import Appointment, AppointmentKind, Patient, Provider

# --------------------------------------------------------------------------------------------
# Forms: create and edit one row
# --------------------------------------------------------------------------------------------


@dataclass
class PatientData:
    chart_number: str
    first_name: str
    last_name: str
    date_of_birth: dt.date | None = None
    sex: str = ""
    phone: str = ""
    email: str = ""


@dataclass
class ProviderData:
    abbr: str
    name: str
    license_number: str = ""
    active: bool = True


@dataclass
class AppointmentData:
    patient_id: int
    provider_id: int | None
    starts_at: dt.datetime
    kind: AppointmentKind = AppointmentKind.OTHER
    note: str = ""


PATIENT_FIELDS = ("chart_number", "external_id", "first_name", "last_name", "date_of_birth", "sex", "phone",
                  "email")
PROVIDER_FIELDS = ("abbr", "external_id", "name", "license_number", "active")
APPOINTMENT_FIELDS = ("external_id", "patient_id", "provider_id", "starts_at", "kind", "note")


def _snapshot(obj, fields: Iterable[str]) -> dict:
    return {name: getattr(obj, name) for name in fields}


def _apply(obj, values: dict) -> tuple[dict, dict]:
    """Set the values that differ; return (before, after) of just those."""
    before, after = {}, {}
    for name, value in values.items():
        if getattr(obj, name) != value:
            before[name], after[name] = getattr(obj, name), value
            setattr(obj, name, value)
    return before, after


def _chart_taken(practice_id: int, chart: str, exclude_id: int | None) -> Patient | None:
    stmt = select(Patient).where(Patient.practice_id == practice_id, Patient.chart_number == chart)
    if exclude_id is not None:
        stmt = stmt.where(Patient.id != exclude_id)
    return db.session.scalar(stmt)


def chart_conflict(practice_id: int, chart: str, exclude_id: int | None = None) -> str | None:
    """Why this chart number can't be used (another patient of the practice has it), or None."""
    other = _chart_taken(practice_id, chart, exclude_id) if chart else None
    return f"Chart number {chart} is already {other.full_name}'s." if other else None


def abbr_conflict(practice_id: int, abbr: str, exclude_id: int | None = None) -> str | None:
    other = _abbr_taken(practice_id, abbr, exclude_id) if abbr else None
    return f"{abbr} is already {other.name}'s abbreviation." if other else None


def create_patient(practice_id: int, data: PatientData, actor: Actor) -> Patient:
    if problem := chart_conflict(practice_id, data.chart_number):
        raise UserError(problem, field="chart_number")
    patient = Patient(practice_id=practice_id, **asdict(data))
    db.session.add(patient)
    db.session.flush()
    record("patient.create", "patient", patient.id, after=_snapshot(patient, PATIENT_FIELDS), actor=actor,
           practice_id=practice_id)
    return patient


def update_patient(patient: Patient, data: PatientData, actor: Actor) -> dict:
    """Apply an edit; one audit row with the changed fields. Returns the changed fields' new values."""
    if problem := chart_conflict(patient.practice_id, data.chart_number, patient.id):
        raise UserError(problem, field="chart_number")
    before, after = _apply(patient, asdict(data))
    if after:
        db.session.flush()
        record("patient.update", "patient", patient.id, before=before, after=after, actor=actor,
               practice_id=patient.practice_id)
    return after


def _abbr_taken(practice_id: int, abbr: str, exclude_id: int | None) -> Provider | None:
    stmt = select(Provider).where(Provider.practice_id == practice_id, Provider.abbr == abbr)
    if exclude_id is not None:
        stmt = stmt.where(Provider.id != exclude_id)
    return db.session.scalar(stmt)


def create_provider(practice_id: int, data: ProviderData, actor: Actor) -> Provider:
    if problem := abbr_conflict(practice_id, data.abbr):
        raise UserError(problem, field="abbr")
    provider = Provider(practice_id=practice_id, **asdict(data))
    db.session.add(provider)
    db.session.flush()
    record("provider.create", "provider", provider.id, after=_snapshot(provider, PROVIDER_FIELDS), actor=actor,
           practice_id=practice_id)
    return provider


def update_provider(provider: Provider, data: ProviderData, actor: Actor) -> dict:
    if problem := abbr_conflict(provider.practice_id, data.abbr, provider.id):
        raise UserError(problem, field="abbr")
    before, after = _apply(provider, asdict(data))
    if after:
        db.session.flush()
        record("provider.update", "provider", provider.id, before=before, after=after, actor=actor,
               practice_id=provider.practice_id)
    return after


def _check_appointment_refs(practice_id: int, data: AppointmentData) -> None:
    patient = db.session.get(Patient, data.patient_id)
    if patient is None or patient.practice_id != practice_id:
        raise UserError("Choose a patient of this practice.", field="patient_id")
    if data.provider_id is not None:
        provider = db.session.get(Provider, data.provider_id)
        if provider is None or provider.practice_id != practice_id:
            raise UserError("Choose a provider of this practice.", field="provider_id")


def create_appointment(practice_id: int, data: AppointmentData, actor: Actor) -> Appointment:
    _check_appointment_refs(practice_id, data)
    appointment = Appointment(practice_id=practice_id, **asdict(data))
    db.session.add(appointment)
    db.session.flush()
    record("appointment.create", "appointment", appointment.id,
           after=_snapshot(appointment, APPOINTMENT_FIELDS), actor=actor, practice_id=practice_id)
    return appointment


def update_appointment(appointment: Appointment, data: AppointmentData, actor: Actor) -> dict:
    """Apply an edit. A new time re-judges the seat risk of the cases seated at this visit."""
    _check_appointment_refs(appointment.practice_id, data)
    return _update_appointment(appointment, asdict(data), actor)


def _update_appointment(appointment: Appointment, values: dict, actor: Actor) -> dict:
    before, after = _apply(appointment, values)
    if not after:
        return after
    db.session.flush()
    db.session.expire(appointment, ["patient", "provider"])
    record("appointment.update", "appointment", appointment.id, before=before, after=after, actor=actor,
           practice_id=appointment.practice_id)
    if "starts_at" in after:
        refresh_cases_for_appointment(appointment.id)
    return after


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def search_patients(practice_id: int, q: str = "", limit: int = 200) -> list[Patient]:
    stmt = select(Patient).where(Patient.practice_id == practice_id)
    if q:
        like = f"%{q.lower()}%"
        stmt = stmt.where(or_(func.lower(Patient.last_name).like(like), func.lower(Patient.first_name).like(like),
                              func.lower(Patient.chart_number) == q.lower()))
    return list(db.session.scalars(stmt.order_by(Patient.last_name, Patient.first_name, Patient.id).limit(limit)))


def patient_cases(patient: Patient) -> list[LabCase]:
    return list(db.session.scalars(
        select(LabCase).where(LabCase.practice_id == patient.practice_id, LabCase.patient_id == patient.id)
        .order_by(LabCase.created_at.desc(), LabCase.id.desc())))


@dataclass
class AppointmentList:
    upcoming: list[Appointment]
    past: list[Appointment]


def list_appointments(practice_id: int, *, start: dt.date | None = None, end: dt.date | None = None,
                      patient_id: int | None = None, now: dt.datetime | None = None,
                      limit: int = 300) -> AppointmentList:
    """Upcoming visits soonest first, then past ones most recent first, within [start, end]."""
    now = now or dt.datetime.now()
    stmt = select(Appointment).where(Appointment.practice_id == practice_id)
    if patient_id is not None:
        stmt = stmt.where(Appointment.patient_id == patient_id)
    if start is not None:
        stmt = stmt.where(Appointment.starts_at >= dt.datetime.combine(start, dt.time()))
    if end is not None:
        stmt = stmt.where(Appointment.starts_at < dt.datetime.combine(end + dt.timedelta(days=1), dt.time()))
    upcoming = db.session.scalars(stmt.where(Appointment.starts_at >= now)
                                  .order_by(Appointment.starts_at, Appointment.id).limit(limit)).all()
    past = db.session.scalars(stmt.where(Appointment.starts_at < now)
                              .order_by(Appointment.starts_at.desc(), Appointment.id.desc()).limit(limit)).all()
    return AppointmentList(list(upcoming), list(past))


def cases_by_seat_appointment(appointment_ids: Iterable[int]) -> dict[int, list[LabCase]]:
    ids = list(appointment_ids)
    found: dict[int, list[LabCase]] = {}
    if ids:
        for case in db.session.scalars(select(LabCase).where(LabCase.seat_appointment_id.in_(ids))
                                       .order_by(LabCase.id)):
            found.setdefault(case.seat_appointment_id, []).append(case)
    return found


def list_providers(practice_id: int) -> list[Provider]:
    return list(db.session.scalars(select(Provider).where(Provider.practice_id == practice_id)
                                   .order_by(Provider.active.desc(), Provider.abbr)))


def patient_choices(practice_id: int) -> list[Patient]:
    return list(db.session.scalars(select(Patient).where(Patient.practice_id == practice_id)
                                   .order_by(Patient.last_name, Patient.first_name, Patient.id)))


# --------------------------------------------------------------------------------------------
# CSV import (Open Dental export columns)
# --------------------------------------------------------------------------------------------

MAX_IMPORT_BYTES = 5 * 1024 * 1024
IMPORT_KINDS = {"patients": "Patients", "providers": "Providers", "appointments": "Appointments"}


class RowError(ValueError):
    """One row can't be imported; the message is the reason shown to the user."""


@dataclass(frozen=True)
class CsvRow:
    line: int  # the file's line number where the row starts (the header is line 1)
    values: dict[str, str]  # normalised column name -> stripped value
    problem: str = ""  # set when the row itself is malformed (too many fields)

    def get(self, name: str) -> str:
        return self.values.get(name, "")


@dataclass
class ParsedCsv:
    columns: list[str]  # normalised names, in file order
    headers: list[str]  # as written in the file
    rows: list[CsvRow]


@dataclass
class RejectedRow:
    line: int
    key: str
    reason: str


@dataclass
class ImportReport:
    kind: str
    filename: str = ""
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.created + self.updated + self.unchanged + len(self.rejected)

    def counts(self) -> dict:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged,
                "rejected": len(self.rejected)}


def normalise_header(name: str) -> str:
    """'\\ufeffChart Number ' -> 'chartnumber': case, BOM, spaces, underscores and dashes don't matter."""
    return re.sub(r"[\s_\-]+", "", name.replace("\ufeff", "")).lower()


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise UserError("The file starts like UTF-16 text but isn't; export it again as CSV.", field="file") from None
    if b"\x00" in data:
        raise UserError("This is not a CSV file: it holds binary data. In Open Dental, export the "
                              "grid or query result as CSV (comma or tab separated text).", field="file")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def parse_csv(data: bytes) -> ParsedCsv:
    """Read a comma, tab or semicolon separated export; raise UserError for a file that isn't one."""
    if len(data) > MAX_IMPORT_BYTES:
        raise UserError(f"The file is {len(data) / 1024 / 1024:.1f} MB; the limit is 5 MB. "
                              "Export fewer rows at a time (for example one year of appointments).", field="file")
    text = _decode(data)
    if not text.strip().replace("\ufeff", ""):
        raise UserError("The file is empty.", field="file")
    text = text.lstrip("\ufeff")
    first_line = text.lstrip("\r\n").splitlines()[0]
    delimiter = max(("\t", ",", ";", "|"), key=first_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[CsvRow] = []
    try:
        header: list[str] | None = None
        last_line = 0
        for record_ in reader:
            start, last_line = last_line + 1, reader.line_num
            if not any(cell.strip() for cell in record_):
                continue
            if header is None:
                header = record_
                continue
            rows.append(_row(start, header, record_))
    except csv.Error as exc:
        raise UserError(f"Line {reader.line_num} can't be read as CSV ({exc}). "
                              "Check the file is a CSV export and not a spreadsheet or a PDF.", field="file") from None
    if header is None:
        raise UserError("The file is empty.", field="file")
    columns = [normalise_header(h) for h in header]
    if len(header) < 2 or not any(columns):
        raise UserError("The first line doesn't look like a CSV header (column names separated by "
                              "commas or tabs).", field="file")
    seen: set[str] = set()
    for raw, name in zip(header, columns):
        if name and name in seen:
            raise UserError(f"The column “{raw.strip()}” appears twice in the header.", field="file")
        seen.add(name)
    if not rows:
        raise UserError("The file has a header line but no rows to import.", field="file")
    return ParsedCsv(columns=columns, headers=[h.replace("\ufeff", "").strip() for h in header], rows=rows)


def _row(line: int, header: list[str], cells: list[str]) -> CsvRow:
    problem = ""
    if len(cells) > len(header) and any(c.strip() for c in cells[len(header):]):
        problem = f"the row has {len(cells)} fields but the header has {len(header)}"
    values = {normalise_header(h): (cells[i].strip() if i < len(cells) else "") for i, h in enumerate(header)}
    values.pop("", None)
    return CsvRow(line=line, values=values, problem=problem)


# ---- values -------------------------------------------------------------------------------

_EMPTY_DATES = {"0001-01-01", "01/01/0001", "1/1/0001", "0000-00-00"}
_DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y")
_TIME_FORMATS = ("%H:%M:%S", "%H:%M", "%I:%M:%S %p", "%I:%M %p", "%I:%M%p")


def parse_date(value: str, column: str) -> dt.date | None:
    """YYYY-MM-DD or MM/DD/YYYY (a trailing midnight time is allowed); blank and 0001-01-01 are empty."""
    value = value.strip()
    date_part, _, time_part = value.partition(" ")
    if not value or date_part in _EMPTY_DATES:
        return None
    if time_part and time_part.strip() not in ("00:00:00", "00:00", "12:00:00 AM", "12:00 AM"):
        raise RowError(f"{column} “{value}” is not a date (use YYYY-MM-DD or MM/DD/YYYY)")
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(date_part, fmt).date()
        except ValueError:
            continue
    raise RowError(f"{column} “{value}” is not a date (use YYYY-MM-DD or MM/DD/YYYY)")


def parse_datetime(value: str, column: str) -> dt.datetime | None:
    """A date as in parse_date, then a time (24-hour, or 12-hour with AM/PM); blank or 0001-01-01 is empty."""
    value = " ".join(value.replace("T", " ").split())
    date_part, _, time_part = value.partition(" ")
    if not value or date_part in _EMPTY_DATES:
        return None
    day = None
    for fmt in _DATE_FORMATS:
        try:
            day = dt.datetime.strptime(date_part, fmt).date()
            break
        except ValueError:
            continue
    if day is None:
        raise RowError(f"{column} “{value}” is not a date and time (use YYYY-MM-DD HH:MM or MM/DD/YYYY HH:MM)")
    if not time_part:
        raise RowError(f"{column} “{value}” has a date but no time")
    for fmt in _TIME_FORMATS:
        try:
            return dt.datetime.combine(day, dt.datetime.strptime(time_part.upper(), fmt).time().replace(second=0))
        except ValueError:
            continue
    raise RowError(f"{column} “{value}” has a time we can't read (use HH:MM)")


# Open Dental's PatientGender: 0 male, 1 female, 2 unknown, 3 other.
_GENDER = {"0": "M", "1": "F", "2": "", "3": "X", "m": "M", "male": "M", "f": "F", "female": "F", "u": "",
           "unknown": "", "x": "X", "o": "X", "other": "X", "": ""}
_BOOL = {"": False, "0": False, "1": True, "false": False, "true": True, "no": False, "yes": True,
         "n": False, "y": True}
# Open Dental's ApptStatus. Only booked visits import; the rest are not times a patient comes in.
_BOOKED = {"1": "Scheduled", "2": "Complete", "4": "ASAP", "scheduled": "Scheduled", "complete": "Complete",
           "completed": "Complete", "asap": "ASAP", "": ""}
_NOT_BOOKED = {"0": "None", "3": "Unscheduled", "5": "Broken", "6": "Planned", "7": "Patient note",
               "8": "Completed patient note", "none": "None", "unschedlist": "Unscheduled",
               "unscheduled": "Unscheduled", "broken": "Broken", "planned": "Planned", "ptnote": "Patient note",
               "ptnotecompleted": "Completed patient note"}
_KINDS = {"seat": AppointmentKind.SEAT, "tryin": AppointmentKind.TRY_IN, "other": AppointmentKind.OTHER}
_TRY_IN = re.compile(r"\btry[\s\-_]?in\b", re.IGNORECASE)
_SEAT = re.compile(r"\bseat\b|\bdeliver", re.IGNORECASE)


def infer_kind(*texts: str) -> AppointmentKind:
    """A visit's kind from its procedure description or note: "try-in" (also "try in") is a try-in;
    "seat" (as in "crown seat") or "deliver"/"delivery" is a seat; anything else is other.
    The first text that says something wins, so ProcDescript is read before Note."""
    for text in texts:
        if _TRY_IN.search(text or ""):
            return AppointmentKind.TRY_IN
        if _SEAT.search(text or ""):
            return AppointmentKind.SEAT
    return AppointmentKind.OTHER


def _text(row: CsvRow, column: str, label: str, limit: int) -> str:
    value = " ".join(row.get(column).split())
    if len(value) > limit:
        raise RowError(f"{label} is longer than {limit} characters")
    return value


def is_email(value: str) -> bool:
    """Shape only: no DNS lookup, and the reserved .test domains of demos and tests are allowed."""
    try:
        validate_email(value, check_deliverability=False, test_environment=True)
    except EmailNotValidError:
        return False
    return True


def _email(value: str) -> str:
    if not value:
        return ""
    if len(value) > 254:
        raise RowError("Email is longer than 254 characters")
    if not is_email(value):
        raise RowError(f"Email “{value}” is not an email address")
    return value


# ---- the importers ------------------------------------------------------------------------

PATIENT_COLUMNS = ("patnum", "chartnumber", "lname", "fname", "birthdate", "gender", "hmphone", "wirelessphone",
                   "wkphone", "email")
PROVIDER_COLUMNS = ("provnum", "abbr", "fname", "lname", "statelicense", "ishidden")
APPOINTMENT_COLUMNS = ("aptnum", "patnum", "chartnumber", "aptdatetime", "provnum", "abbr", "provabbr",
                       "aptstatus", "note", "kind", "procdescript")


def _check_columns(parsed: ParsedCsv, kind: str, known: tuple[str, ...], required: list[tuple[str, ...]],
                   spelled: dict[str, str]) -> list[str]:
    """Refuse a file without the columns this kind needs; return the columns we ignore."""
    present = set(parsed.columns)
    if not present & set(known):
        raise UserError(
            f"None of this file's columns are ones we read for {kind} (found: "
            f"{', '.join(h for h in parsed.headers if h)[:200]}). Expected Open Dental columns such as "
            f"{', '.join(spelled[k] for k in known)}.", field="file")
    for options in required:
        if not present & set(options):
            names = " or ".join(spelled[o] for o in options)
            raise UserError(f"The file has no {names} column, which an import of {kind} needs.", field="file")
    return [h for h, c in zip(parsed.headers, parsed.columns) if h and c not in known]


_SPELLED = {
    "patnum": "PatNum", "chartnumber": "ChartNumber", "lname": "LName", "fname": "FName", "birthdate": "Birthdate",
    "gender": "Gender", "hmphone": "HmPhone", "wirelessphone": "WirelessPhone", "wkphone": "WkPhone",
    "email": "Email", "provnum": "ProvNum", "abbr": "Abbr", "statelicense": "StateLicense", "ishidden": "IsHidden",
    "aptnum": "AptNum", "aptdatetime": "AptDateTime", "provabbr": "ProvAbbr", "aptstatus": "AptStatus",
    "note": "Note", "kind": "Kind", "procdescript": "ProcDescript",
}


def _run(report: ImportReport, parsed: ParsedCsv, key_of: Callable[[CsvRow], str],
         apply_row: Callable[[CsvRow], str]) -> None:
    """Apply each row; `apply_row` returns 'created', 'updated' or 'unchanged', or raises RowError."""
    for row in parsed.rows:
        key = key_of(row)
        try:
            if row.problem:
                raise RowError(row.problem)
            outcome = apply_row(row)
        except RowError as exc:
            report.rejected.append(RejectedRow(row.line, key, str(exc)))
            continue
        setattr(report, outcome, getattr(report, outcome) + 1)


def _summary(report: ImportReport, practice_id: int, actor: Actor) -> None:
    record(f"{report.kind[:-1]}.import", "practice", practice_id, actor=actor, practice_id=practice_id,
           after={"file": report.filename[:200], **report.counts(),
                  "rejected_lines": [r.line for r in report.rejected][:200]})


def import_patients(practice_id: int, parsed: ParsedCsv, actor: Actor, filename: str = "") -> ImportReport:
    """Keyed by chart number (ChartNumber, or PatNum when ChartNumber is blank). Only the columns
    present in the file are compared and written; a row equal to what is stored is left alone."""
    report = ImportReport("patients", filename)
    report.ignored_columns = _check_columns(parsed, "patients", PATIENT_COLUMNS,
                                            [("lname",), ("fname",), ("chartnumber", "patnum")], _SPELLED)
    present = set(parsed.columns)
    existing = {p.chart_number: p for p in db.session.scalars(
        select(Patient).where(Patient.practice_id == practice_id))}
    by_patnum = {p.external_id: p for p in existing.values() if p.external_id}
    seen_chart: dict[str, int] = {}
    seen_patnum: dict[str, int] = {}
    phone_columns = [c for c in ("wirelessphone", "hmphone", "wkphone") if c in present]

    def key_of(row: CsvRow) -> str:
        return row.get("chartnumber") or row.get("patnum")

    def apply_row(row: CsvRow) -> str:
        patnum = _text(row, "patnum", "PatNum", 40)
        chart = _text(row, "chartnumber", "ChartNumber", 40) or patnum
        if not chart:
            raise RowError("no ChartNumber or PatNum")
        values: dict = {"chart_number": chart}
        values["last_name"] = _text(row, "lname", "LName", 100)
        if not values["last_name"]:
            raise RowError("missing last name (LName)")
        values["first_name"] = _text(row, "fname", "FName", 100)
        if not values["first_name"]:
            raise RowError("missing first name (FName)")
        if "birthdate" in present:
            born = parse_date(row.get("birthdate"), "Birthdate")
            if born is not None and born > dt.date.today():
                raise RowError(f"Birthdate {born:%Y-%m-%d} is in the future")
            values["date_of_birth"] = born
        if "gender" in present:
            gender = row.get("gender").lower()
            if gender not in _GENDER:
                raise RowError(f"Gender “{row.get('gender')}” is not 0/1/2 or M/F/U")
            values["sex"] = _GENDER[gender]
        if phone_columns:
            values["phone"] = next((p for c in phone_columns if (p := _text(row, c, _SPELLED[c], 40))), "")
        if "email" in present:
            values["email"] = _email(row.get("email"))
        if patnum:
            values["external_id"] = patnum
        if chart in seen_chart:
            raise RowError(f"duplicate chart number {chart} in the file (first on line {seen_chart[chart]})")
        seen_chart[chart] = row.line
        if patnum and patnum in seen_patnum:
            raise RowError(f"duplicate PatNum {patnum} in the file (first on line {seen_patnum[patnum]})")
        if patnum:
            seen_patnum[patnum] = row.line
        patient = existing.get(chart)
        owner = by_patnum.get(patnum) if patnum else None
        if owner is not None and owner is not patient:
            raise RowError(f"PatNum {patnum} already belongs to chart {owner.chart_number}")
        if patient is None:
            patient = Patient(practice_id=practice_id, **{"sex": "", "phone": "", "email": "", **values})
            db.session.add(patient)
            db.session.flush()
            existing[chart] = patient
            if patnum:
                by_patnum[patnum] = patient
            record("patient.create", "patient", patient.id, after=_snapshot(patient, PATIENT_FIELDS),
                   actor=actor, practice_id=practice_id)
            return "created"
        before, after = _apply(patient, values)
        if not after:
            return "unchanged"
        if patnum:
            by_patnum[patnum] = patient
        db.session.flush()
        record("patient.update", "patient", patient.id, before=before, after=after, actor=actor,
               practice_id=practice_id)
        return "updated"

    _run(report, parsed, key_of, apply_row)
    _summary(report, practice_id, actor)
    return report


def import_providers(practice_id: int, parsed: ParsedCsv, actor: Actor, filename: str = "") -> ImportReport:
    """Keyed by Abbr. Name is FName and LName; IsHidden=1 makes the provider inactive."""
    report = ImportReport("providers", filename)
    report.ignored_columns = _check_columns(parsed, "providers", PROVIDER_COLUMNS, [("abbr",)], _SPELLED)
    present = set(parsed.columns)
    existing = {p.abbr: p for p in db.session.scalars(select(Provider).where(Provider.practice_id == practice_id))}
    by_provnum = {p.external_id: p for p in existing.values() if p.external_id}
    seen: dict[str, int] = {}
    seen_provnum: dict[str, int] = {}

    def apply_row(row: CsvRow) -> str:
        abbr = _text(row, "abbr", "Abbr", 20)
        if not abbr:
            raise RowError("missing Abbr")
        provnum = _text(row, "provnum", "ProvNum", 40)
        values: dict = {"abbr": abbr}
        if present & {"fname", "lname"}:
            name = " ".join(p for p in (_text(row, "fname", "FName", 100), _text(row, "lname", "LName", 100)) if p)
            values["name"] = name or abbr
        if "statelicense" in present:
            values["license_number"] = _text(row, "statelicense", "StateLicense", 40)
        if "ishidden" in present:
            hidden = row.get("ishidden").lower()
            if hidden not in _BOOL:
                raise RowError(f"IsHidden “{row.get('ishidden')}” is not 0 or 1")
            values["active"] = not _BOOL[hidden]
        if provnum:
            values["external_id"] = provnum
        if abbr in seen:
            raise RowError(f"duplicate Abbr {abbr} in the file (first on line {seen[abbr]})")
        seen[abbr] = row.line
        if provnum and provnum in seen_provnum:
            raise RowError(f"duplicate ProvNum {provnum} in the file (first on line {seen_provnum[provnum]})")
        if provnum:
            seen_provnum[provnum] = row.line
        provider = existing.get(abbr)
        owner = by_provnum.get(provnum) if provnum else None
        if owner is not None and owner is not provider:
            raise RowError(f"ProvNum {provnum} already belongs to provider {owner.abbr}")
        if provider is None:
            provider = Provider(practice_id=practice_id, **{"name": abbr, "license_number": "", "active": True,
                                                            **values})
            db.session.add(provider)
            db.session.flush()
            existing[abbr] = provider
            if provnum:
                by_provnum[provnum] = provider
            record("provider.create", "provider", provider.id, after=_snapshot(provider, PROVIDER_FIELDS),
                   actor=actor, practice_id=practice_id)
            return "created"
        before, after = _apply(provider, values)
        if not after:
            return "unchanged"
        if provnum:
            by_provnum[provnum] = provider
        db.session.flush()
        record("provider.update", "provider", provider.id, before=before, after=after, actor=actor,
               practice_id=practice_id)
        return "updated"

    _run(report, parsed, lambda row: row.get("abbr"), apply_row)
    _summary(report, practice_id, actor)
    return report


def import_appointments(practice_id: int, parsed: ParsedCsv, actor: Actor, filename: str = "") -> ImportReport:
    """Keyed by AptNum (stored as the appointment's external_id).

    The patient is found by ChartNumber, else by PatNum (a patient imported with that PatNum, or
    whose chart number is the PatNum). The provider by ProvNum (an imported provider) or by Abbr /
    ProvAbbr. Only Scheduled, Complete and ASAP visits import (AptStatus 1, 2, 4); broken, planned,
    unscheduled and note rows are rejected with the reason. The kind is the `Kind` column (seat,
    try_in, other) when given; otherwise it is inferred by `infer_kind` from ProcDescript, then Note.
    An inferred "other" never overwrites a kind set in the portal."""
    report = ImportReport("appointments", filename)
    report.ignored_columns = _check_columns(parsed, "appointments", APPOINTMENT_COLUMNS,
                                            [("aptnum",), ("aptdatetime",), ("chartnumber", "patnum")], _SPELLED)
    present = set(parsed.columns)
    patients = list(db.session.scalars(select(Patient).where(Patient.practice_id == practice_id)))
    by_chart = {p.chart_number: p.id for p in patients}
    by_patnum = {p.external_id: p.id for p in patients if p.external_id}
    providers = list(db.session.scalars(select(Provider).where(Provider.practice_id == practice_id)))
    prov_by_abbr = {p.abbr: p.id for p in providers}
    prov_by_num = {p.external_id: p.id for p in providers if p.external_id}
    existing = {a.external_id: a for a in db.session.scalars(
        select(Appointment).where(Appointment.practice_id == practice_id, Appointment.external_id.is_not(None)))}
    abbr_column = next((c for c in ("abbr", "provabbr") if c in present), None)
    provider_given = bool(present & {"provnum", "abbr", "provabbr"})
    seen: dict[str, int] = {}

    def patient_of(row: CsvRow) -> int:
        chart, patnum = row.get("chartnumber"), row.get("patnum")
        if chart:
            if chart not in by_chart:
                raise RowError(f"unknown patient: no chart number {chart} in this practice (import patients first)")
            return by_chart[chart]
        if patnum:
            found = by_patnum.get(patnum) or by_chart.get(patnum)
            if found is None:
                raise RowError(f"unknown patient: PatNum {patnum} is not in this practice (import patients first)")
            return found
        raise RowError("no PatNum or ChartNumber")

    def provider_of(row: CsvRow) -> int | None:
        provnum = row.get("provnum")
        abbr = row.get(abbr_column) if abbr_column else ""
        if abbr:
            if abbr not in prov_by_abbr:
                raise RowError(f"unknown provider {abbr}")
            return prov_by_abbr[abbr]
        if provnum and provnum != "0":
            if provnum not in prov_by_num:
                raise RowError(f"unknown provider: ProvNum {provnum} (import providers first)")
            return prov_by_num[provnum]
        return None

    def apply_row(row: CsvRow) -> str:
        aptnum = _text(row, "aptnum", "AptNum", 40)
        if not aptnum:
            raise RowError("missing AptNum")
        status = row.get("aptstatus").lower()
        if status in _NOT_BOOKED:
            raise RowError(f"AptStatus {_NOT_BOOKED[status]}: not a booked visit (only Scheduled and Complete "
                           "appointments are imported)")
        if status not in _BOOKED:
            raise RowError(f"AptStatus “{row.get('aptstatus')}” is unknown")
        starts_at = parse_datetime(row.get("aptdatetime"), "AptDateTime")
        if starts_at is None:
            raise RowError("missing AptDateTime")
        values: dict = {"external_id": aptnum, "patient_id": patient_of(row), "starts_at": starts_at}
        if provider_given:
            values["provider_id"] = provider_of(row)
        if "note" in present:
            values["note"] = " ".join(row.get("note").split())[:500]
        explicit = row.get("kind").lower().replace("-", "").replace("_", "").replace(" ", "")
        if explicit:
            if explicit not in _KINDS:
                raise RowError(f"Kind “{row.get('kind')}” is not seat, try_in or other")
            values["kind"] = _KINDS[explicit]
        else:
            values["kind"] = infer_kind(row.get("procdescript"), row.get("note"))
        if aptnum in seen:
            raise RowError(f"duplicate AptNum {aptnum} in the file (first on line {seen[aptnum]})")
        seen[aptnum] = row.line
        appointment = existing.get(aptnum)
        if appointment is None:
            appointment = Appointment(practice_id=practice_id, **{"provider_id": None, "note": "", **values})
            db.session.add(appointment)
            db.session.flush()
            existing[aptnum] = appointment
            record("appointment.create", "appointment", appointment.id,
                   after=_snapshot(appointment, APPOINTMENT_FIELDS), actor=actor, practice_id=practice_id)
            return "created"
        if not explicit and values["kind"] is AppointmentKind.OTHER:
            values.pop("kind")
        return "updated" if _update_appointment(appointment, values, actor) else "unchanged"

    _run(report, parsed, lambda row: row.get("aptnum"), apply_row)
    _summary(report, practice_id, actor)
    return report


IMPORTERS: dict[str, Callable[..., ImportReport]] = {
    "patients": import_patients, "providers": import_providers, "appointments": import_appointments,
}


def run_import(kind: str, practice_id: int, data: bytes, actor: Actor, filename: str = "") -> ImportReport:
    """Parse and import one file. Raises UserError (nothing written) for a file we can't read."""
    if kind not in IMPORTERS:
        raise UserError("Choose what the file holds: patients, providers or appointments.", field="file")
    return IMPORTERS[kind](practice_id, parse_csv(data), actor, filename)
