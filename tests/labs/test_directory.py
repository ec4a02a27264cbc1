"""The lab directory: admins edit, coordinators read, labs belong to the organisation (docs/reliability.md F6)."""
from __future__ import annotations

import base64
import re

from sqlalchemy import func, select

from portal.audit.models import AuditEvent
from portal.extensions import db as _db
from portal.labs.models import Channel, Lab, LabSecret
from portal.practices.models import Organization
from tests import factories


def _form(**overrides) -> dict:
    data = {
        "name": "Smile Lab", "channel": "email", "contact_name": "Rita", "email": "orders@smile.test",
        "cc_emails": "rita@smile.test; boss@smile.test", "phone": "+1 555 0101", "address": "1 Main St",
        "api_url": "", "active": "y", "notes": "",
        "services-0-restoration": "crown", "services-0-materials": "zirconia, emax, zirconia",
        "services-0-turnaround_days": "6", "services-0-fee": "180.00",
        "services-1-restoration": "night_guard", "services-1-materials": "hard acrylic",
        "services-1-turnaround_days": "3", "services-1-fee": "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _count(model) -> int:
    _db.session.expire_all()
    return _db.session.scalar(select(func.count()).select_from(model))


def _audits(action: str) -> list[AuditEvent]:
    return _db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)).all()


def test_everyone_reads_only_admins_change(client, login, world):
    login("coordinator")
    index = client.get("/labs/").get_data(as_text=True)
    assert "Email Lab" in index and "New lab" not in index
    assert client.get(f"/labs/{world.labs['email'].id}").status_code == 200
    assert client.get("/labs/new").status_code == 403
    assert client.post("/labs/new", _form()).status_code == 403
    assert client.post(f"/labs/{world.labs['api'].id}/secrets").status_code == 403
    login("admin")
    assert "New lab" in client.get("/labs/").get_data(as_text=True)


def test_admin_creates_a_lab_with_services(client, login, world):
    login("admin")
    response = client.post("/labs/new", _form())
    assert response.status_code == 303, response.get_data(as_text=True)
    lab = _db.session.scalars(select(Lab).where(Lab.name == "Smile Lab")).one()
    assert lab.organization_id == world.org.id and lab.channel is Channel.EMAIL
    assert lab.cc_emails == "rita@smile.test, boss@smile.test"
    crown = lab.service_for("crown")
    assert crown.materials == "zirconia, emax" and crown.turnaround_days == 6 and str(crown.fee) == "180.00"
    assert lab.service_for("night_guard").fee is None
    event = _audits("lab.create")[0]
    assert event.entity_id == str(lab.id) and "Smile Lab" in event.after
    page = client.get(f"/labs/{lab.id}").get_data(as_text=True)
    assert "orders@smile.test" in page and "zirconia, emax" in page


def test_invalid_input_is_422_with_errors_beside_fields_and_writes_nothing(client, login, world):
    login("admin")
    labs, audits = _count(Lab), _count(AuditEvent)
    cases = [
        (_form(email=""), "email-error", "needs an email address"),
        (_form(email="not-an-address"), "email-error", "not an email address"),
        (_form(cc_emails="ok@x.test, nope"), "cc_emails-error", "not an email address"),
        (_form(channel="api", api_url="http://lab.example.com/orders"), "api_url-error", "https://"),
        (_form(channel="api", api_url=""), "api_url-error", "needs the URL"),
        (_form(**{"services-0-turnaround_days": "0"}), "services-0-turnaround_days-error", "1 to 60"),
        (_form(**{"services-0-turnaround_days": "61"}), "services-0-turnaround_days-error", "1 to 60"),
        (_form(**{"services-1-restoration": "crown"}), None, "listed twice"),
        (_form(name="  "), "name-error", "Give the lab&#39;s name"),
    ]
    for data, error_id, text in cases:
        response = client.post("/labs/new", data)
        body = response.get_data(as_text=True)
        assert response.status_code == 422, (data, body[:500])
        assert text in body, text
        if error_id:
            assert f'id="{error_id}"' in body, error_id
    assert _count(Lab) == labs and _count(AuditEvent) == audits


def test_api_lab_urls(client, login, world):
    login("admin")
    for url in ("https://lab.example.com/v1/orders", "http://127.0.0.1:8123/orders"):
        response = client.post("/labs/new", _form(name=f"API {url}", channel="api", email="", api_url=url))
        assert response.status_code == 303, response.get_data(as_text=True)[:800]


def test_edit_changes_fields_and_services_audited(client, login, world):
    lab = world.labs["email"]
    login("admin")
    form = client.get(f"/labs/{lab.id}/edit").get_data(as_text=True)
    assert 'value="Email Lab"' in form and "services-2-restoration" in form
    data = _form(name="Email Lab", email=lab.email, cc_emails="",
                 **{"services-0-restoration": "crown", "services-0-turnaround_days": "4",
                    "services-1-restoration": "bridge", "services-1-materials": "zirconia",
                    "services-1-turnaround_days": "7", "services-1-remove": "y",
                    "services-2-restoration": "veneer", "services-2-materials": "emax",
                    "services-2-turnaround_days": "8"})
    response = client.post(f"/labs/{lab.id}/edit", data)
    assert response.status_code == 303, response.get_data(as_text=True)[:800]
    _db.session.expire_all()
    lab = _db.session.get(Lab, lab.id)
    assert sorted(s.restoration for s in lab.services) == ["crown", "veneer"]
    assert lab.service_for("crown").turnaround_days == 4
    event = _audits("lab.update")[0]
    assert '"services"' in event.before and '"veneer"' in event.after and '"contact_name"' in event.after
    # Saving the same thing again writes no audit row.
    client.post(f"/labs/{lab.id}/edit", data)
    assert len(_audits("lab.update")) == 1


def test_add_a_service_row_writes_nothing(client, login, world):
    login("admin")
    audits = _count(AuditEvent)
    response = client.post("/labs/new", _form(add_service="1"))
    assert response.status_code == 200
    assert 'name="services-2-restoration"' in response.get_data(as_text=True)
    assert _count(AuditEvent) == audits and not _db.session.scalars(select(Lab).where(Lab.name == "Smile Lab")).all()


def test_another_organisations_lab_is_404(client, login, world):
    other_org = Organization(name="Another DSO")
    _db.session.add(other_org)
    _db.session.flush()
    stranger = factories.lab(other_org, Channel.API, name="Stranger Lab")
    _db.session.commit()
    login("admin")
    assert "Stranger Lab" not in client.get("/labs/").get_data(as_text=True)
    for method, url in (("get", f"/labs/{stranger.id}"), ("get", f"/labs/{stranger.id}/edit"),
                        ("post", f"/labs/{stranger.id}/edit"), ("post", f"/labs/{stranger.id}/secrets"),
                        ("post", f"/labs/{stranger.id}/secrets/{stranger.secrets[0].id}/revoke")):
        response = getattr(client, method)(url) if method == "get" else client.post(url, _form())
        assert response.status_code == 404, url
    assert _db.session.get(LabSecret, stranger.secrets[0].id).revoked_at is None


def test_secret_rotation(client, login, world):
    lab = world.labs["api"]
    old = lab.secrets[0]
    login("admin")
    response = client.post(f"/labs/{lab.id}/secrets")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    body = response.get_data(as_text=True)
    shown = re.search(r'id="new-secret" class="secret-value" value="(whsec_[^"]+)"', body).group(1)
    assert len(base64.b64decode(shown.removeprefix("whsec_"))) == 32
    _db.session.expire_all()
    active = [s for s in _db.session.get(Lab, lab.id).secrets if s.revoked_at is None]
    assert sorted(s.secret for s in active) == sorted([old.secret, shown])  # both work during the rotation
    # Shown once: the lab page does not show it again.
    assert shown not in client.get(f"/labs/{lab.id}").get_data(as_text=True)
    # A third is refused until one is revoked.
    third = client.post(f"/labs/{lab.id}/secrets")
    assert third.status_code == 409 and "Two secrets are already active" in third.get_data(as_text=True)
    assert client.post(f"/labs/{lab.id}/secrets/{old.id}/revoke").status_code == 303
    _db.session.expire_all()
    assert _db.session.get(LabSecret, old.id).revoked_at is not None
    again = client.post(f"/labs/{lab.id}/secrets/{old.id}/revoke")
    assert again.status_code == 303
    assert client.post(f"/labs/{lab.id}/secrets").status_code == 200
    # Audit rows name secret ids, never the secrets.
    events = _audits("lab.secret_create") + _audits("lab.secret_revoke")
    assert len(events) == 3
    for event in _db.session.scalars(select(AuditEvent)):
        assert "whsec_" not in event.after + event.before


def test_coordinator_does_not_see_secret_controls(client, login, world):
    login("coordinator")
    body = client.get(f"/labs/{world.labs['api'].id}").get_data(as_text=True)
    assert "Signing secrets" not in body and "whsec_" not in body


def test_outside_development_a_lab_url_at_an_internal_address_is_refused_with_a_reason(client, login, world,
                                                                                       monkeypatch, app):
    """The form says at once what the transport enforces on every connection (portal/outbound.py)."""
    monkeypatch.setitem(app.config, "DEVELOPMENT", False)
    monkeypatch.setitem(app.config, "OUTBOUND_ALLOWED_HOSTS", "")
    login("admin")
    labs = _count(Lab)
    for url, kind in (("https://169.254.169.254/latest/meta-data/", "link-local"), ("https://10.0.0.1/", "private"),
                      ("https://[::1]/", "loopback"), ("http://127.0.0.1:8123/orders", "loopback"),
                      ("https://localhost/orders", "loopback")):
        response = client.post("/labs/new", _form(name=f"API {url}", channel="api", email="", api_url=url))
        body = response.get_data(as_text=True)
        assert response.status_code == 422, url
        assert 'id="api_url-error"' in body and f"it is a {kind} address" in body, url
        assert "OUTBOUND_ALLOWED_HOSTS" in body
    assert _count(Lab) == labs
    monkeypatch.setitem(app.config, "OUTBOUND_ALLOWED_HOSTS", "10.0.0.1")  # a lab inside the network, on purpose
    response = client.post("/labs/new", _form(name="In-house lab", channel="api", email="", api_url="https://10.0.0.1/"))
    assert response.status_code == 303, response.get_data(as_text=True)[:800]
