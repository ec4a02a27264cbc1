"""Known history for the report tests: every figure below is worked out by hand.

Lab A (world.labs["email"]), five cases sent on Monday 3 March 2031. Business days from that
Monday: Tue 4 = 1, Wed 5 = 2, Thu 6 = 3, Fri 7 = 4, Mon 10 = 5, Tue 11 = 6, Wed 12 = 7,
Thu 13 = 8, Mon 17 = 10.

    case  dispatched   received     due      seat     fee   notes
    a1    Fri 7 (4)    Mon 10 (5)   Mon 10   Tue 11   200   crown + night guard; on time, on time
    a2    Mon 10 (5)   Tue 11 (6)   Mon 10   Mon 17   200   late by due date, on time for the seat
    a3    Tue 11 (6)   Wed 12 (7)   Wed 12   Tue 11   300   on time, late for the seat; remade (fit, lab)
    a4    Thu 13 (8)   Mon 17 (10)  Tue 11   —        —     late, no seat
    a5    —            —            Fri 7    2 Jun    100   still at the lab: late by due date (past),
                                                           seat not yet come (left out)

Lab B (world.labs["api"]), two cases sent on Tuesday 1 April 2031 (Wed 2 = 1 ... Mon 7 = 4,
Tue 8 = 5, Thu 10 = 7):

    b1    Mon 7 (4)    Tue 8 (5)    Tue 8    Tue 8    500   on time, on time; remade (shade, practice)
    b2    Tue 8 (5)    Thu 10 (7)   Wed 9    Tue 15   500   bridge; late, on time

Left out: a cancelled case, a draft, a case sent before the range, another practice's case, and
a1's remake, which was cancelled. "Today" is 15 May 2031; the range is March and April 2031.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

import pytest

from portal.audit.actor import Actor
from portal.cases import lifecycle
from portal.cases.lifecycle import Status
from portal.cases.services import CaseData, ItemData, create_case, remake
from portal.extensions import db
from portal.reports.services import ReportFilters
from tests import factories

TODAY = dt.date(2031, 5, 15)
RANGE = ReportFilters(dt.date(2031, 3, 1), dt.date(2031, 4, 30))


def at(day: str, hour: int = 10) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(hour))


def made(world, lab, sent: str | None, dispatched: str | None = None, received: str | None = None, *,
         due: str | None = None, seat: str | None = None, fee: str | None = None,
         restorations=("crown",), practice=None):
    """A case moved through the real lifecycle on the given days."""
    practice = practice or world.practice
    patient = factories.patient(practice)
    appt = factories.appointment(patient, dt.date.fromisoformat(seat)) if seat else None
    provider = world.provider if practice is world.practice else factories.provider(practice)
    coordinator = Actor.user(world.users["coordinator"])
    case = create_case(practice, CaseData(
        patient_id=patient.id, provider_id=provider.id, lab_id=lab.id,
        seat_appointment_id=appt.id if appt else None,
        due_date=dt.date.fromisoformat(due) if due else None, fee=Decimal(fee) if fee else None,
        items=[ItemData(teeth=["11"] if r != "night_guard" else [], restoration=r, material="zirconia",
                        shade="A2", margin="chamfer") for r in restorations],
    ), coordinator)
    if sent:
        lifecycle.move(case, Status.SENT, actor=coordinator, now=at(sent, 9))
    if dispatched:
        lifecycle.move(case, Status.DISPATCHED, actor=Actor.lab(lab), now=at(dispatched, 15))
    if received:
        lifecycle.move(case, Status.RECEIVED, actor=coordinator, now=at(received, 11))
    return case


@dataclass
class History:
    lab_a: object
    lab_b: object
    cases: dict

    def numbers(self, *names: str) -> set[str]:
        return {self.cases[n].number for n in names}


@pytest.fixture()
def history(world) -> History:
    a, b = world.labs["email"], world.labs["api"]
    coordinator = Actor.user(world.users["coordinator"])
    c = {
        "a1": made(world, a, "2031-03-03", "2031-03-07", "2031-03-10", due="2031-03-10", seat="2031-03-11",
                   fee="200", restorations=("crown", "night_guard")),
        "a2": made(world, a, "2031-03-03", "2031-03-10", "2031-03-11", due="2031-03-10", seat="2031-03-17",
                   fee="200"),
        "a3": made(world, a, "2031-03-03", "2031-03-11", "2031-03-12", due="2031-03-12", seat="2031-03-11",
                   fee="300"),
        "a4": made(world, a, "2031-03-03", "2031-03-13", "2031-03-17", due="2031-03-11"),
        "a5": made(world, a, "2031-03-03", due="2031-03-07", seat="2031-06-02", fee="100"),
        "b1": made(world, b, "2031-04-01", "2031-04-07", "2031-04-08", due="2031-04-08", seat="2031-04-08",
                   fee="500"),
        "b2": made(world, b, "2031-04-01", "2031-04-08", "2031-04-10", due="2031-04-09", seat="2031-04-15",
                   fee="500", restorations=("bridge",)),
        # Left out of every figure:
        "cancelled": made(world, a, "2031-03-04", due="2031-03-11", fee="900"),
        "draft": made(world, a, None, fee="900"),
        "before": made(world, a, "2031-02-27", "2031-02-28", "2031-03-03", due="2031-03-03", fee="900"),
        "other": made(world, a, "2031-03-03", "2031-03-04", "2031-03-05", due="2031-03-10", fee="900",
                      practice=world.other_practice),
    }
    lifecycle.move(c["cancelled"], Status.CANCELLED, actor=coordinator, reason="patient moved away",
                   now=at("2031-03-05"))
    c["r3"] = remake(c["a3"], coordinator, "fit", "lab", "open margin")
    c["r_b1"] = remake(c["b1"], coordinator, "shade", "practice", "too dark")
    c["r_a1"] = remake(c["a1"], coordinator, "damaged", "lab", "chipped")
    lifecycle.move(c["r_a1"], Status.CANCELLED, actor=coordinator, reason="entered by mistake")
    db.session.commit()
    return History(a, b, c)
