"""flask organisation-manager: grant and revoke the DSO view's role, audited; bad input says so
and changes nothing."""
from __future__ import annotations

from sqlalchemy import select

from portal.audit.models import AuditEvent
from portal.extensions import db


def test_grant_and_revoke_are_audited(app, world):
    runner = app.test_cli_runner()
    manager = world.users["manager"]
    result = runner.invoke(args=["organisation-manager", manager.email, "--organization-id", str(world.org.id)])
    assert result.exit_code == 0, result.output
    db.session.expire_all()
    assert manager.manages(world.org.id)
    result = runner.invoke(args=["organisation-manager", manager.email, "--organization-id", str(world.org.id),
                                 "--revoke"])
    assert result.exit_code == 0, result.output
    db.session.expire_all()
    assert not manager.manages(world.org.id)
    actions = list(db.session.scalars(select(AuditEvent.action).where(AuditEvent.entity_type == "organization")))
    assert actions == ["organization.manager_grant", "organization.manager_revoke"]


def test_an_unknown_user_or_organisation_changes_nothing(app, world):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["organisation-manager", "nobody@test.test", "--organization-id", str(world.org.id)])
    assert result.exit_code != 0 and "no user" in result.output
    result = runner.invoke(args=["organisation-manager", world.users["manager"].email, "--organization-id", "999"])
    assert result.exit_code != 0 and "no organisation" in result.output
    assert db.session.scalar(select(AuditEvent).where(AuditEvent.entity_type == "organization")) is None
