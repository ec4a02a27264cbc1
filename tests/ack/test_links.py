"""The lab's private link (docs/reliability.md M1-M5, F1)."""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets

import pytest
from sqlalchemy import select

from portal.ack.models import AckLink
from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.clock import utcnow
from portal.extensions import db as _db
from portal.mail.models import MailMessage
from tests import factories
from tests.ack.conftest import audit_count, csrf_from, send_to_email_lab


def _reload(case) -> LabCase:
    _db.session.expire_all()
    return _db.session.get(LabCase, case.id)


def _private_headers(response):
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"


# ---- docs/reliability.md M1: the token -------------------------------------------------------------------------------

def test_token_is_long_random_and_stored_only_as_a_hash(app, sent):
    assert len(sent.token) == 43  # 32 bytes from secrets.token_urlsafe
    link = _db.session.get(AckLink, sent.link.id)
    assert link.token_hash == hashlib.sha256(sent.token.encode()).hexdigest()
    row = _db.session.execute(select(*AckLink.__table__.c).where(AckLink.id == link.id)).one()
    assert all(sent.token not in str(value) for value in row)
    assert (link.case_id, link.lab_id) == (sent.case.id, sent.case.lab_id)
    assert link.dispatch_id is not None
    assert dt.timedelta(days=29) < link.expires_at - link.created_at <= dt.timedelta(days=30)
    for event in _db.session.scalars(select(AuditEvent)):
        assert sent.token not in (event.after + event.before + event.source)


def test_work_order_email_has_the_link_and_the_minimum_of_patient_data(world):
    patient = factories.patient(world.practice, first="Grace", last="Hopper", chart="CH-777",
                                dob=dt.date(1906, 12, 9))
    case = factories.case(world, Status.SENT, lab=world.labs["email"], patient_obj=patient)
    sent = send_to_email_lab(world, case)
    mail = sent.mail
    assert mail.to_addrs == world.labs["email"].email and mail.kind == "work_order"
    for body in (mail.text_body, mail.html_body):
        assert f"/lab/{sent.token}" in body
        assert case.number in body and "G. H." in body and "zirconia" in body
        assert "Hopper" not in body and "Grace" not in body and "CH-777" not in body and "1906" not in body


def test_a_new_link_revokes_the_old_one(client, world, sent):
    second = send_to_email_lab(world, sent.case)
    old = client.get(sent.url)
    assert old.status_code == 410 and sent.case.number not in old.get_data(as_text=True)
    assert client.get(second.url).status_code == 200
    revoked = _db.session.get(AckLink, sent.link.id)
    assert revoked.revoked_reason == "superseded"


# ---- docs/reliability.md M2: opening the link changes nothing ---------------------------------------------------------

def test_get_changes_nothing(client, sent):
    before_audit, before_status = audit_count(), sent.case.status
    for _ in range(3):
        response = client.get(sent.url)
        assert response.status_code == 200
    assert audit_count() == before_audit
    assert _reload(sent.case).status is before_status
    assert _db.session.get(AckLink, sent.link.id).last_action_at is None
    body = response.get_data(as_text=True)
    assert sent.case.number in body and "Acknowledge" in body
    assert "<script" not in body  # no auto-submitting page


def test_page_shows_minimum_patient_data_and_the_prescription(client, world):
    patient = factories.patient(world.practice, first="Grace", last="Hopper", chart="CH-777",
                                dob=dt.date(1906, 12, 9))
    sent = send_to_email_lab(world, factories.case(world, Status.SENT, lab=world.labs["email"],
                                                   patient_obj=patient, seat=dt.date.today() + dt.timedelta(days=20)))
    body = client.get(sent.url).get_data(as_text=True)
    assert "G. H." in body and "zirconia" in body and "A2" in body and "chamfer" in body
    assert "Hopper" not in body and "CH-777" not in body and "1906" not in body
    assert world.practice.name in body


# ---- docs/reliability.md M3: headers -------------------------------------------------------------------------------------

def test_private_headers_on_every_answer(client, sent, lab_post, app, monkeypatch):
    _private_headers(client.get(sent.url))
    _private_headers(client.get(f"/lab/{secrets.token_urlsafe(32)}"))
    _private_headers(lab_post(sent, "/status", {"status": "dispatched"}))  # 422
    _private_headers(lab_post(sent, "/status", {"status": "acknowledged"}))  # 303
    monkeypatch.setitem(app.config, "LAB_LINK_RATE_LIMIT", "1 per minute")
    client.get(sent.url)
    limited = client.get(sent.url)
    assert limited.status_code == 429
    _private_headers(limited)


# ---- each action, as the lab ---------------------------------------------------------------------------

def _actions_audited(sent, n):
    rows = _db.session.scalars(select(AuditEvent).where(
        AuditEvent.entity_type == "lab_case", AuditEvent.entity_id == str(sent.case.id),
        AuditEvent.actor_type == "lab").order_by(AuditEvent.seq)).all()
    assert len(rows) == n
    for row in rows:
        assert row.actor_id == str(sent.case.lab_id)
        assert row.source == f"lab-link:{sent.link.id}"
        assert sent.token not in row.source + row.after
    return rows


def test_each_action_moves_the_case_as_the_lab(client, sent, lab_post):
    steps = [
        ({"status": "acknowledged"}, Status.ACKNOWLEDGED, "case.acknowledge"),
        ({"status": "in_production"}, Status.IN_PRODUCTION, "case.start_production"),
        ({"status": "on_hold", "reason": "Margin unclear on 11"}, Status.ON_HOLD, "case.hold"),
        ({"status": "in_production"}, Status.IN_PRODUCTION, "case.resume"),
        ({"status": "dispatched", "carrier": "UPS", "tracking_number": "1Z999",
          "eta": (dt.date.today() + dt.timedelta(days=2)).isoformat()}, Status.DISPATCHED, "case.dispatch"),
    ]
    for n, (data, status, action) in enumerate(steps, start=1):
        response = lab_post(sent, "/status", data)
        assert response.status_code == 303, response.get_data(as_text=True)
        assert response.headers["Location"].endswith(sent.url)
        case = _reload(sent.case)
        assert case.status is status
        assert _actions_audited(sent, n)[-1].action == action
    case = _reload(sent.case)
    assert (case.carrier, case.tracking_number) == ("UPS", "1Z999")
    assert case.lab_eta == dt.date.today() + dt.timedelta(days=2)
    page = client.get(sent.url).get_data(as_text=True)
    assert "Dispatched" in page and "1Z999" in page and "Nothing to do from here" in page
    assert _db.session.get(AckLink, sent.link.id).last_action_at is not None


def test_ask_for_rescan_needs_a_reason(sent, lab_post):
    refused = lab_post(sent, "/status", {"status": "rescan", "reason": "  "})
    assert refused.status_code == 422
    assert "Say why" in refused.get_data(as_text=True)
    assert _reload(sent.case).status is Status.SENT
    done = lab_post(sent, "/status", {"status": "rescan", "reason": "Distorted prep on 11"})
    assert done.status_code == 303
    case = _reload(sent.case)
    assert case.status is Status.RESCAN and case.status_reason == "Distorted prep on 11"


def test_dispatch_without_tracking_is_422_and_changes_nothing(sent, lab_post):
    before = audit_count()
    response = lab_post(sent, "/status", {"status": "dispatched", "carrier": "UPS", "tracking_number": "",
                                           "eta": ""})
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert 'id="tracking_number-error"' in body and "tracking number" in body
    assert 'id="eta-error"' in body
    assert 'value="UPS"' in body  # what the lab typed is kept
    assert audit_count() == before and _reload(sent.case).status is Status.SENT
    past = lab_post(sent, "/status", {"status": "dispatched", "carrier": "UPS", "tracking_number": "1Z",
                                       "eta": (dt.date.today() - dt.timedelta(days=1)).isoformat()})
    assert past.status_code == 422 and "in the past" in past.get_data(as_text=True)


def test_only_the_moves_allowed_now_are_offered_and_accepted(client, sent, lab_post):
    body = client.get(sent.url).get_data(as_text=True)
    for value in ("acknowledged", "in_production", "dispatched", "on_hold", "rescan"):
        assert f'value="{value}"' in body
    for value in ("received", "fitted", "cancelled", "draft"):
        assert f'value="{value}"' not in body
    before = audit_count()
    for value in ("received", "cancelled", "sent", "nonsense"):
        response = lab_post(sent, "/status", {"status": value, "reason": "x"})
        assert response.status_code == 409, value
    assert "Only the practice" in lab_post(sent, "/status", {"status": "cancelled", "reason": "x"}).get_data(
        as_text=True)
    assert audit_count() == before and _reload(sent.case).status is Status.SENT


def test_resume_from_hold_is_offered(client, sent, lab_post):
    lab_post(sent, "/status", {"status": "on_hold", "reason": "Waiting for shade photo"})
    body = client.get(sent.url).get_data(as_text=True)
    assert "Resume" in body and "Waiting for shade photo" in body
    assert lab_post(sent, "/status", {"status": "sent"}).status_code == 303
    assert _reload(sent.case).status is Status.SENT


# ---- expired, revoked, guessed --------------------------------------------------------------------------

def test_expired_link_is_410_without_case_data(client, sent, lab_post):
    link = _db.session.get(AckLink, sent.link.id)
    link.expires_at = utcnow() - dt.timedelta(seconds=1)
    _db.session.commit()
    response = client.get(sent.url)
    assert response.status_code == 410
    body = response.get_data(as_text=True)
    assert "expired" in body and sent.case.number not in body and "zirconia" not in body
    before = audit_count()
    csrf = csrf_from(client.get("/login").get_data(as_text=True))
    post = client.raw.post(f"{sent.url}/status", data={"csrf_token": csrf, "status": "acknowledged"})
    assert post.status_code == 410 and audit_count() == before
    assert _reload(sent.case).status is Status.SENT


def test_cancelling_the_case_revokes_the_link_and_tells_the_lab(client, login, sent):
    login()
    response = client.post(f"/cases/{sent.case.id}/move", {"status": "cancelled", "reason": "Patient moved away"})
    assert response.status_code == 303
    assert _reload(sent.case).status is Status.CANCELLED
    gone = client.get(sent.url)
    assert gone.status_code == 410 and sent.case.number not in gone.get_data(as_text=True)
    assert _db.session.get(AckLink, sent.link.id).revoked_reason == "cancelled"
    mail = _db.session.scalars(select(MailMessage).where(MailMessage.kind == "cancelled")).one()
    assert "Patient moved away" in mail.text_body and sent.case.number in mail.subject
    assert "/lab/" not in mail.text_body


def test_unknown_and_malformed_tokens_are_404_without_case_data(client, sent):
    for token in (secrets.token_urlsafe(32), "short", sent.token[:-1] + ("A" if sent.token[-1] != "A" else "B")):
        response = client.get(f"/lab/{token}")
        assert response.status_code == 404
        assert sent.case.number not in response.get_data(as_text=True)


def test_repeated_guesses_get_429(client, app, sent, monkeypatch):
    monkeypatch.setitem(app.config, "TOKEN_GUESS_LIMIT", "5 per minute")
    codes = [client.get(f"/lab/{secrets.token_urlsafe(32)}").status_code for _ in range(8)]
    assert codes[:5] == [404] * 5 and set(codes[5:]) == {429}
    # The guessing address is now held back on every link page.
    assert client.get(sent.url).status_code == 429


def test_real_links_do_not_count_as_guesses(client, app, sent, monkeypatch):
    monkeypatch.setitem(app.config, "TOKEN_GUESS_LIMIT", "3 per minute")
    assert {client.get(sent.url).status_code for _ in range(6)} == {200}


# ---- docs/reliability.md F1: CSRF --------------------------------------------------------------------------------------------

def test_post_without_csrf_is_refused_and_changes_nothing(client, sent):
    client.get(sent.url)
    before = audit_count()
    response = client.post(f"{sent.url}/status", {"status": "acknowledged"}, csrf=False)
    assert response.status_code == 400
    _private_headers(response)
    message = client.post(f"{sent.url}/message", {"text": "hello"}, csrf=False)
    assert message.status_code == 400
    assert audit_count() == before and _reload(sent.case).status is Status.SENT
    assert sent.case.number not in response.get_data(as_text=True)


def test_csrf_token_from_the_page_works_without_login(app, world, sent):
    fresh = app.test_client()  # a lab's phone: no login, only the session cookie the page sets
    page = fresh.get(sent.url)
    token = csrf_from(page.get_data(as_text=True))
    response = fresh.post(f"{sent.url}/status", data={"csrf_token": token, "status": "acknowledged"})
    assert response.status_code == 303
    assert _reload(sent.case).status is Status.ACKNOWLEDGED
    wrong = fresh.post(f"{sent.url}/status", data={"csrf_token": "x" + token[1:], "status": "in_production"})
    assert wrong.status_code == 400 and _reload(sent.case).status is Status.ACKNOWLEDGED


# ---- integration with "Approve and send" -----------------------------------------------------------------

def test_approve_and_send_to_an_email_lab_mails_a_working_link(client, login, world):
    case = factories.case(world, Status.DRAFT, lab=world.labs["email"],
                          due=dt.date.today() + dt.timedelta(days=10))
    login()
    response = client.post(f"/cases/{case.id}/send", {"confirm_risk": "y"})
    assert response.status_code in (302, 303), response.get_data(as_text=True)[:2000]
    mail = _db.session.scalars(select(MailMessage).where(MailMessage.case_id == case.id)).one()
    assert mail.kind == "work_order" and mail.state == "pending"
    from tests.ack.conftest import LINK

    token = LINK.search(mail.text_body).group(1)
    link = _db.session.scalars(select(AckLink).where(AckLink.case_id == case.id)).one()
    assert link.token_hash == hashlib.sha256(token.encode()).hexdigest() and link.dispatch_id
    client.post("/logout")
    assert client.get(f"/lab/{token}").status_code == 200


@pytest.mark.parametrize("channel", ["api", "manual"])
def test_only_email_labs_get_links(world, channel):
    from portal.ack.services import LinkError, resend_link
    from portal.audit.actor import Actor

    case = factories.case(world, Status.SENT, lab=world.labs[channel])
    with pytest.raises(LinkError):
        resend_link(case, Actor.user(world.users["coordinator"]))
