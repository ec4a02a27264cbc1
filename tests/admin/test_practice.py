import datetime as dt

from sqlalchemy import select

from portal.audit.models import AuditEvent
from portal.cases.duedates import add_business_days
from portal.cases.lifecycle import Status
from portal.extensions import db
from portal.practices.models import PracticeClosure
from tests import factories


def test_closed_day_rejudges_seat_risk(client, login, world):
    today = dt.date.today()
    seat = add_business_days(today, 10)
    due = add_business_days(seat, -2)  # exactly on the limit: not at risk
    case = factories.case(world, Status.SENT, seat=seat, due=due)
    assert not case.seat_risk
    login("admin")
    closed = add_business_days(seat, -1)
    response = client.post("/admin/practice/closures", {"day": closed.isoformat(), "reason": "Training"})
    assert response.status_code == 303
    db.session.refresh(case)
    assert case.seat_risk  # the buffer now reaches one business day further back
    assert db.session.scalar(select(AuditEvent).where(AuditEvent.action == "practice.closure_add"))

    again = client.post("/admin/practice/closures", {"day": closed.isoformat()})
    assert again.status_code == 422 and "already a closed day" in again.get_data(as_text=True)


def test_settings_validation_and_roles(client, login, world):
    login("coordinator")
    assert client.get("/admin/practice").status_code == 403
    login("admin")
    bad = client.post("/admin/practice", {"name": "", "tooth_numbering": "fdi", "seat_buffer_days": "99"})
    assert bad.status_code == 422
    html = bad.get_data(as_text=True)
    assert "This field is required" in html and "between 0 and 15" in html
    ok = client.post("/admin/practice", {"name": "Renamed", "tooth_numbering": "universal", "seat_buffer_days": "3"})
    assert ok.status_code == 303
    db.session.refresh(world.practice)
    assert world.practice.name == "Renamed" and world.practice.seat_buffer_days == 3


def test_other_practice_closure_is_404(client, login, world):
    foreign = PracticeClosure(practice_id=world.other_practice.id, day=dt.date(2030, 1, 2))
    db.session.add(foreign)
    db.session.commit()
    login("admin")
    assert client.post(f"/admin/practice/closures/{foreign.id}/delete").status_code == 404
    assert db.session.get(PracticeClosure, foreign.id) is not None
