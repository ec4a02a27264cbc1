import datetime as dt

from sqlalchemy import func, select

from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.extensions import db
from tests import factories


def _form(world, patient, **over):
    data = {
        "patient_id": patient.id, "provider_id": world.provider.id, "lab_id": world.lab.id,
        "seat_appointment_id": 0, "origin": "manual", "stage": "final",
        "items-0-teeth": "11", "items-0-restoration": "crown", "items-0-material": "zirconia",
        "items-0-shade": "A2", "items-0-margin": "chamfer",
    }
    data.update(over)
    return data


def test_create_case_computes_due_date_and_audits(client, login, world):
    patient = factories.patient(world.practice)
    login()
    response = client.post("/cases/new", _form(world, patient))
    assert response.status_code == 302
    case = db.session.scalar(select(LabCase))
    assert case.status is Status.DRAFT and case.number.startswith("LC-")
    assert case.items[0].teeth == "11" and not case.due_date_overridden
    assert case.due_date is not None and case.due_date.weekday() < 5
    row = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "case.create"))
    assert row.entity_id == str(case.id) and row.actor_label == world.users["coordinator"].email


def test_universal_teeth_are_stored_in_fdi(client, login, world):
    world.practice.tooth_numbering = "universal"
    db.session.commit()
    patient = factories.patient(world.practice)
    login()
    client.post("/cases/new", _form(world, patient, **{"items-0-teeth": "3-5", "items-0-restoration": "bridge"}))
    case = db.session.scalar(select(LabCase))
    assert case.items[0].teeth == "16 15 14"


def test_invalid_case_form_is_422_with_errors_beside_fields_and_writes_nothing(client, login, world):
    patient = factories.patient(world.practice)
    login()
    response = client.post("/cases/new", _form(world, patient, **{"items-0-teeth": "99", "lab_id": 0}),
                           htmx=True)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "not a" in html and "tooth number" in html and "Choose the lab" in html
    assert "<html" not in html  # the form fragment only
    assert db.session.scalar(select(func.count()).select_from(LabCase)) == 0
    assert db.session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "case.create")) == 0


def test_another_practices_case_is_404(client, login, world):
    foreign = factories.case(world, Status.SENT, practice=world.other_practice)
    login()
    for url in (f"/cases/{foreign.id}", f"/cases/{foreign.id}/edit", f"/cases/{foreign.id}/label",
                f"/cases/{foreign.id}/slip"):
        assert client.get(url).status_code == 404, url
    assert client.post(f"/cases/{foreign.id}/move", {"status": "acknowledged"}).status_code == 404
    db.session.refresh(foreign)
    assert foreign.status is Status.SENT


def test_post_without_csrf_is_refused_and_changes_nothing(client, login, world):
    case = factories.case(world, Status.SENT)
    login()
    before = db.session.scalar(select(func.count()).select_from(AuditEvent))
    response = client.post(f"/cases/{case.id}/move", {"status": "acknowledged"}, csrf=False)
    assert response.status_code == 400
    db.session.refresh(case)
    assert case.status is Status.SENT
    assert db.session.scalar(select(func.count()).select_from(AuditEvent)) == before


def test_script_in_patient_name_renders_as_text(client, login, world):
    evil = factories.patient(world.practice, first='" onmouseover="alert(1)', last="<script>alert(1)</script>")
    case = factories.case(world, Status.SENT, patient_obj=evil)
    login()
    for url in ("/", f"/cases/{case.id}", "/patients", f"/cases/{case.id}/slip"):
        html = client.get(url).get_data(as_text=True)
        assert "<script>alert(1)</script>" not in html, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, url
        assert '" onmouseover="alert(1)' not in html, url


def test_move_from_board_refused_returns_board_with_reason(client, login, world):
    case = factories.case(world, Status.DRAFT)
    login()
    response = client.post(f"/cases/{case.id}/move", {"status": "received"}, htmx="board-columns")
    assert response.status_code == 409
    html = response.get_data(as_text=True)
    assert "can&#39;t go from Draft to Received" in html
    # the card is drawn back in its old column
    draft_col = html.split('data-status="draft"', 1)[1].split("</section>", 1)[0]
    assert case.number in draft_col
    db.session.refresh(case)
    assert case.status is Status.DRAFT


def test_move_needing_reason(client, login, world):
    case = factories.case(world, Status.SENT)
    login()
    refused = client.post(f"/cases/{case.id}/move", {"status": "on_hold"}, htmx="board-columns")
    assert refused.status_code == 409 and "needs a reason" in refused.get_data(as_text=True)
    ok = client.post(f"/cases/{case.id}/move", {"status": "on_hold", "reason": "Shade photo missing"},
                     htmx="board-columns")
    assert ok.status_code == 200
    db.session.refresh(case)
    assert case.status is Status.ON_HOLD and case.status_reason == "Shade photo missing"


def test_manager_can_read_but_not_move(client, login, world):
    case = factories.case(world, Status.SENT)
    login("manager")
    assert client.get(f"/cases/{case.id}").status_code == 200
    assert client.post(f"/cases/{case.id}/move", {"status": "acknowledged"}).status_code == 403
    assert client.get("/cases/new").status_code == 403


def test_check_in_and_remake(client, login, world):
    case = factories.case(world, Status.DISPATCHED)
    login()
    r = client.post(f"/cases/{case.id}/check-in", {"quality_checked": "y", "quality_note": "fits"})
    assert r.status_code == 303
    db.session.refresh(case)
    assert case.status is Status.RECEIVED and case.quality_checked
    r = client.post(f"/cases/{case.id}/remake", {"reason": "shade", "payer": "lab", "notes": "too light"})
    assert r.status_code == 303
    remake = db.session.scalar(select(LabCase).where(LabCase.remake_of_id == case.id))
    assert remake.status is Status.DRAFT and remake.remake_payer == "lab" and remake.items[0].teeth == "11"


def test_label_has_qr_and_find_box_finds_case(client, login, world):
    case = factories.case(world, Status.DISPATCHED)
    login()
    label = client.get(f"/cases/{case.id}/label").get_data(as_text=True)
    assert "<svg" in label and case.number in label
    found = client.get(f"/cases/find?number={case.number.lower()}")
    assert found.status_code == 302 and found.headers["Location"].endswith(f"/cases/{case.id}")
    missing = client.get("/cases/find?number=LC-0000-000000")
    assert missing.status_code == 302


def test_seat_risk_follows_due_date_override(client, login, world):
    today = dt.date.today()
    case = factories.case(world, Status.SENT, seat=today + dt.timedelta(days=21))
    assert not case.seat_risk
    login()
    data = _form(world, case.patient, due_date=(today + dt.timedelta(days=30)).isoformat(),
                 seat_appointment_id=case.seat_appointment_id)
    assert client.post(f"/cases/{case.id}/edit", data).status_code == 302
    db.session.refresh(case)
    assert case.due_date_overridden and case.seat_risk


def test_patient_picker_searches_this_practice_only_and_keeps_the_choice(client, login, world):
    chosen = factories.patient(world.practice, "Zoe", "Quarry", chart="Q-1")
    match = factories.patient(world.practice, "Quentin", "Quarrington", chart="Q-2")
    factories.patient(world.other_practice, "Quincy", "Quarrel", chart="Q-3")
    login()
    html = client.hx(f"/cases/patients?patient_q=quarr&patient_id={chosen.id}").get_data(as_text=True)
    assert "Quarrington" in html and "Quarry" in html and "Quarrel" not in html
    assert f'value="{chosen.id}" checked' in html and "<html" not in html
    by_chart = client.hx("/cases/patients?patient_q=q-2").get_data(as_text=True)
    assert "Quarrington" in by_chart and "Quarry" not in by_chart
    # Without htmx the Find button re-renders the whole form with the matches; nothing is saved.
    page = client.post("/cases/new", {"patient_q": "quarrington", "find_patient": "1"})
    assert page.status_code == 200 and "Quarrington" in page.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(LabCase)) == 0
    assert match.id


def test_case_without_a_patient_is_refused_beside_the_field(client, login, world):
    login()
    data = _form(world, factories.patient(world.practice))
    del data["patient_id"]
    response = client.post("/cases/new", data, htmx=True)
    assert response.status_code == 422 and "Choose the patient." in response.get_data(as_text=True)
