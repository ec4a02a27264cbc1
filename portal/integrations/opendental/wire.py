"""Every Open Dental field name Lab Manager reads or writes, and nothing else of Open Dental.

docs/vendors/opendental.md says what each one means. The parsers turn one row of Open Dental's JSON
into the neutral dict portal/integrations/pms.py applies (`ref` is the primary key as text); a row
that can't be read raises WireError naming the field. The builders turn a Lab Manager case into
the body of `POST /labcases` and `PUT /labcases/{LabCaseNum}`.
"""
from __future__ import annotations

import datetime as dt
import re

# Paths, under the integration's base URL.
PATHS = {"patients": "patients/Simple", "appointments": "appointments", "providers": "providers",
         "laboratories": "laboratories", "labcases": "labcases", "deleted_appointments": "histappointments"}
PRIMARY_KEYS = {"patients": "PatNum", "appointments": "AptNum", "providers": "ProvNum",
                "laboratories": "LaboratoryNum", "labcases": "LabCaseNum", "deleted_appointments": "HistApptNum"}
# A deleted appointment is gone from /appointments; its history row says so (HistApptAction).
DELETED = {"HistApptAction": "Deleted"}
HIST_STAMP = "HistDateTStamp"
LIMIT = 100  # Open Dental answers at most 100 items a request
STAMP = "DateTStamp"
SERVER_TIME = "serverDateTime"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
NONE_DATES = ("", "0001-01-01", "0001-01-01 00:00:00")
# AptStatus: booked visits, and those that mean the visit will not happen as planned.
BOOKED = frozenset({"Scheduled", "Complete", "ASAP"})
NOT_HAPPENING = {"Broken": "broken", "UnschedList": "unscheduled", "Planned": "planned", "PtNote": "a note",
                 "PtNoteCompleted": "a note"}
# PatStatus: a current patient, or why the patient is not one (the neutral word Lab Manager keeps).
STANDING = {"Patient": "", "NonPatient": "not a patient", "Inactive": "inactive", "Archived": "archived",
            "Deceased": "deceased", "Prospective": "prospective"}
# Instructions of a lab case Lab Manager wrote carry this marker, so after an unknown outcome the
# earlier write is found instead of a second lab case being created.
MARKER = "[Lab Manager {number}]"
MARKER_RE = re.compile(r"\[Lab Manager ([A-Z0-9\-]+)\]")


class WireError(ValueError):
    """A row whose fields can't be read."""


def _text(row: dict, name: str, limit: int = 200) -> str:
    value = row.get(name)
    if value is None:
        return ""
    return " ".join(str(value).split())[:limit]


def _int(row: dict, name: str, required: bool = True) -> int:
    value = row.get(name)
    if isinstance(value, bool) or value in (None, ""):
        if required:
            raise WireError(f"{name} is missing")
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise WireError(f"{name} is not a number: {value!r}") from None


def _date(row: dict, name: str) -> dt.date | None:
    value = _text(row, name, 40)
    if value in NONE_DATES:
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        raise WireError(f"{name} is not a date: {value!r}") from None


def _datetime(row: dict, name: str) -> dt.datetime | None:
    value = _text(row, name, 40)
    if value in NONE_DATES:
        return None
    try:
        return dt.datetime.strptime(value, TIME_FORMAT)
    except ValueError:
        raise WireError(f"{name} is not a date and time: {value!r}") from None


def _flag(row: dict, name: str) -> bool:
    value = row.get(name)
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1")


def stamp_of(row: dict) -> str:
    return _text(row, STAMP, 40)


def key_of(resource: str, row: dict) -> int:
    return _int(row, PRIMARY_KEYS[resource])


def patient(row: dict) -> dict:
    ref = str(_int(row, "PatNum"))
    last, first = _text(row, "LName", 100), _text(row, "FName", 100)
    if not last and not first:
        raise WireError("LName and FName are both empty")
    return {"ref": ref, "last_name": last, "first_name": first, "preferred": _text(row, "Preferred", 100),
            "date_of_birth": _date(row, "Birthdate"), "status": _text(row, "PatStatus", 20),
            "standing": _standing(row),
            "chart_number": _text(row, "ChartNumber", 40), "email": _text(row, "Email", 254),
            "phone": _text(row, "WirelessPhone", 40), "clinic": str(_int(row, "ClinicNum", False)),
            "provider_ref": str(_int(row, "PriProv", False) or ""), "stamp": stamp_of(row)}


def _standing(row: dict) -> str:
    status = _text(row, "PatStatus", 20)
    if status not in STANDING and status:
        return status.lower()[:20]  # a status newer than this list: kept in Open Dental's word
    return STANDING.get(status, "")


def appointment(row: dict) -> dict:
    status = _text(row, "AptStatus", 20)
    starts = _datetime(row, "AptDateTime")
    if starts is None and status in BOOKED:
        raise WireError("AptDateTime is missing")
    return {"ref": str(_int(row, "AptNum")), "patient_ref": str(_int(row, "PatNum")), "status": status,
            "not_happening": NOT_HAPPENING.get(status, ""),
            "starts_at": starts, "provider_ref": str(_int(row, "ProvNum", False) or ""),
            "procedure": _text(row, "ProcDescript", 255), "note": _text(row, "Note", 500),
            "clinic": str(_int(row, "ClinicNum", False)), "stamp": stamp_of(row)}


def provider(row: dict) -> dict:
    abbr = _text(row, "Abbr", 20)
    name = " ".join(p for p in (_text(row, "FName", 100), _text(row, "LName", 100)) if p)
    return {"ref": str(_int(row, "ProvNum")), "abbr": abbr, "name": name or abbr,
            "hidden": _flag(row, "IsHidden"), "stamp": stamp_of(row)}


def laboratory(row: dict) -> dict:
    return {"ref": str(_int(row, "LaboratoryNum")), "name": _text(row, "Description", 200) or "(no description)",
            "phone": _text(row, "Phone", 40), "email": _text(row, "Email", 254), "hidden": _flag(row, "IsHidden"),
            "stamp": stamp_of(row)}


def deleted_appointment(row: dict) -> dict:
    """A history row of an appointment deleted in Open Dental: `ref` is the history row's key."""
    if _text(row, "HistApptAction", 20) != DELETED["HistApptAction"]:
        raise WireError(f"HistApptAction is {row.get('HistApptAction')!r}, not Deleted")
    return {"ref": str(_int(row, "HistApptNum")), "appointment_ref": str(_int(row, "AptNum")),
            "patient_ref": str(_int(row, "PatNum", False)), "deleted_at": _datetime(row, HIST_STAMP),
            "stamp": _text(row, HIST_STAMP, 40)}


PARSERS = {"patients": patient, "appointments": appointment, "providers": provider, "laboratories": laboratory,
           "deleted_appointments": deleted_appointment}


def lab_case(row: dict) -> dict:
    return {"ref": str(_int(row, "LabCaseNum")), "patient_ref": str(_int(row, "PatNum", False)),
            "instructions": str(row.get("Instructions") or ""), "sent": _text(row, "DateTimeSent", 40),
            "received": _text(row, "DateTimeRecd", 40), "checked": _text(row, "DateTimeChecked", 40),
            "due": _text(row, "DateTimeDue", 40)}


def marker(case_number: str) -> str:
    return MARKER.format(number=case_number)


def marked_case(rows: list[dict], case_number: str) -> dict | None:
    """The lab case among `rows` whose Instructions carry our marker for `case_number`."""
    for row in rows:
        found = MARKER_RE.search(str(row.get("Instructions") or ""))
        if found and found.group(1) == case_number:
            return row
    return None


def _when(value: dt.datetime | dt.date | None) -> str:
    if value is None:
        return "0001-01-01 00:00:00"
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time(17, 0))  # a due date: the end of the working day
    return value.strftime(TIME_FORMAT)


def lab_case_create(*, patient_ref: str, laboratory_ref: str, provider_ref: str, appointment_ref: str,
                    due: dt.date | None, instructions: str, fee, invoice: str) -> dict:
    body = {"PatNum": int(patient_ref), "LaboratoryNum": int(laboratory_ref), "ProvNum": int(provider_ref),
            "DateTimeDue": _when(due), "Instructions": instructions, "InvoiceNum": invoice}
    if appointment_ref:
        body["AptNum"] = int(appointment_ref)
    if fee is not None:
        body["LabFee"] = float(fee)
    return body


def lab_case_update(*, sent, received, checked, due, instructions: str, fee, invoice: str) -> dict:
    body = {"DateTimeSent": _when(sent), "DateTimeRecd": _when(received), "DateTimeChecked": _when(checked),
            "DateTimeDue": _when(due), "Instructions": instructions, "InvoiceNum": invoice}
    if fee is not None:
        body["LabFee"] = float(fee)
    return body
