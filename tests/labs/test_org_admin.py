"""Labs are shared by the organisation's practices: a lab's API address and signing secrets are the
organisation's administrators' to change, not one practice's admin's (issue 9, outbound requests)."""
from __future__ import annotations

from sqlalchemy import func, select

from portal.audit.models import AuditEvent
from portal.extensions import db as _db
from portal.labs.models import Lab, LabSecret
from portal.practices.models import OrganizationMembership, OrganizationRole, Role
from tests import factories
from tests.labs.test_directory import _form


def _practice_admin(world, login):
    """An admin of the world's main practice who holds no role over the organisation."""
    world.users["practice_admin"] = factories.user("padmin@test.test", [(world.practice, Role.ADMIN)])
    _db.session.commit()
    return login("practice_admin")


def _audit_count() -> int:
    return _db.session.scalar(select(func.count()).select_from(AuditEvent))


def test_a_practice_admin_cannot_repoint_a_shared_lab(client, login, world):
    lab = world.labs["api"]
    _practice_admin(world, login)
    before_url, audits = lab.api_url, _audit_count()
    response = client.post(f"/labs/{lab.id}/edit", _form(name=lab.name, channel="api", email="",
                                                         api_url="https://evil.example/orders"))
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "Only an administrator of the organisation can change a lab&#39;s API address" in page
    assert 'id="api_url-error"' in page  # beside the field, not only above the form
    _db.session.expire_all()
    assert _db.session.get(Lab, lab.id).api_url == before_url and _audit_count() == audits


def test_a_practice_admin_still_edits_the_rest_and_sees_why_the_address_is_locked(client, login, world):
    lab = world.labs["api"]
    _practice_admin(world, login)
    form = client.get(f"/labs/{lab.id}/edit").get_data(as_text=True)
    assert "Set by an administrator of the organisation" in form and "readonly" in form
    response = client.post(f"/labs/{lab.id}/edit", _form(name=lab.name, channel="api", email="",
                                                         api_url=lab.api_url, phone="+1 555 0199"))
    assert response.status_code == 303, response.get_data(as_text=True)
    _db.session.expire_all()
    assert _db.session.get(Lab, lab.id).phone == "+1 555 0199"


def test_a_practice_admin_cannot_create_an_api_lab_with_an_address(client, login, world):
    _practice_admin(world, login)
    response = client.post("/labs/new", _form(channel="api", email="", api_url="https://lab.example/orders"))
    assert response.status_code == 422
    assert _db.session.scalar(select(func.count()).select_from(Lab).where(Lab.name == "Smile Lab")) == 0


def test_a_practice_admin_neither_generates_nor_revokes_secrets(client, login, world):
    lab = world.labs["api"]
    secret = lab.secrets[0]
    count = _db.session.scalar(select(func.count()).select_from(LabSecret))
    _practice_admin(world, login)
    page = client.get(f"/labs/{lab.id}").get_data(as_text=True)
    assert "Only an administrator of the organisation generates or revokes these" in page
    assert "Generate a new secret" not in page
    assert client.post(f"/labs/{lab.id}/secrets").status_code == 403
    assert client.post(f"/labs/{lab.id}/secrets/{secret.id}/revoke").status_code == 403
    _db.session.expire_all()
    assert _db.session.scalar(select(func.count()).select_from(LabSecret)) == count
    assert _db.session.get(LabSecret, secret.id).revoked_at is None


def test_an_organisation_admin_changes_the_address_and_rotates_secrets(client, login, world):
    lab = world.labs["api"]
    login("admin")  # the world's admin administers the organisation
    response = client.post(f"/labs/{lab.id}/edit", _form(name=lab.name, channel="api", email="",
                                                         api_url="https://lab.example/v2/orders"))
    assert response.status_code == 303, response.get_data(as_text=True)
    assert client.post(f"/labs/{lab.id}/secrets").status_code == 200
    _db.session.expire_all()
    assert _db.session.get(Lab, lab.id).api_url == "https://lab.example/v2/orders"


def test_a_revoked_organisation_admin_is_a_practice_admin_again(client, login, world):
    row = _db.session.scalar(select(OrganizationMembership).where(
        OrganizationMembership.user_id == world.users["admin"].id, OrganizationMembership.role == OrganizationRole.ADMIN))
    row.active = False
    _db.session.commit()
    login("admin")
    assert client.post(f"/labs/{world.labs['api'].id}/secrets").status_code == 403


def test_one_person_may_both_manage_and_administer_the_organisation(world):
    _db.session.add(OrganizationMembership(user_id=world.users["admin"].id, organization_id=world.org.id,
                                           role=OrganizationRole.MANAGER))
    _db.session.commit()
    admin = world.users["admin"]
    assert admin.manages(world.org.id) and admin.administers(world.org.id)


def test_the_cli_grants_and_revokes_the_organisation_admin_role(app, world):
    from portal.cli import organisation_admin

    user = world.users["manager"]
    runner = app.test_cli_runner()
    result = runner.invoke(organisation_admin, [user.email, "--organization-id", str(world.org.id)])
    assert result.exit_code == 0, result.output
    assert user.administers(world.org.id)
    result = runner.invoke(organisation_admin, [user.email, "--organization-id", str(world.org.id), "--revoke"])
    assert result.exit_code == 0 and not user.administers(world.org.id)
    actions = _db.session.scalars(select(AuditEvent.action).where(AuditEvent.entity_type == "organization")).all()
    assert actions[-2:] == ["organization.admin_grant", "organization.admin_revoke"]
