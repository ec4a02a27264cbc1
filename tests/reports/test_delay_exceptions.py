"""The delay-exceptions list (the "At risk" page): late and at-risk cases with the patient's next
appointment, found in one statement."""
from __future__ import annotations

import datetime as dt

from portal.cases.lifecycle import Status
from portal.extensions import db
from portal.people.models import AppointmentKind
from portal.reports.services import next_appointments
from tests import factories
from tests.board.test_board import StatementCounter


def _row(html: str, number: str) -> str:
    return next(r for r in html.split("<tr>") if number in r)


def test_each_case_shows_the_patients_next_appointment(client, login, world):
    today = dt.date.today()
    soon = today + dt.timedelta(days=3)
    # At seat risk: the work is due after the seat; the patient also has a check-up before then.
    patient = factories.patient(world.practice, "Nell", "Next")
    risky = factories.case(world, Status.SENT, patient_obj=patient, seat=soon, due=soon + dt.timedelta(days=5))
    checkup = factories.appointment(patient, today + dt.timedelta(days=1), kind=AppointmentKind.OTHER)
    factories.appointment(patient, today - dt.timedelta(days=30))  # past visits don't count
    # Late (overdue at the lab), whose next appointment is its own seat.
    late = factories.case(world, Status.IN_PRODUCTION, seat=today + dt.timedelta(days=20),
                          due=today - dt.timedelta(days=2))
    # Late with nothing booked.
    lonely = factories.case(world, Status.SENT, due=today - dt.timedelta(days=1))
    db.session.commit()
    assert risky.seat_risk

    login("coordinator")
    body = client.get("/risk").get_data(as_text=True)
    assert "Next appointment" in body
    first = _row(body, risky.number)
    assert checkup.starts_at.strftime("%a %d %b %H:%M") in first and "other visit" in first
    assert "before the work is back" in first
    second = _row(body, late.number)
    assert "this case’s seat" in second and "before the work is back" not in second
    assert "none booked" in _row(body, lonely.number)


def test_next_appointments_is_one_statement_for_any_number_of_patients(app, world):
    patients = [factories.patient(world.practice) for _ in range(30)]
    now = dt.datetime(2031, 5, 15, 12, 0)
    for n, p in enumerate(patients):
        factories.appointment(p, dt.date(2031, 5, 16 + n % 5))
        factories.appointment(p, dt.date(2031, 6, 1))
    other = factories.patient(world.other_practice)
    factories.appointment(other, dt.date(2031, 5, 16))
    db.session.commit()
    practice_id, ids = world.practice.id, [p.id for p in patients] + [other.id]
    with StatementCounter(db.engine) as counter:
        found = next_appointments(practice_id, ids, now)
    assert counter.count == 1
    assert set(found) == {p.id for p in patients}  # another practice's patient is not looked up there
    assert all(found[p.id].starts_at.date() == dt.date(2031, 5, 16 + n % 5) for n, p in enumerate(patients))
    assert next_appointments(world.practice.id, [], now) == {}
