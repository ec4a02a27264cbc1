"""Lab webhook signing secrets are encrypted at rest with the key ring that encrypts scanner
credentials (SCANNER_CREDENTIALS_KEYS, portal/keyring.py): the raw database rows hold Fernet
tokens, never whsec_ text; migration 0010 encrypts the rows that were in clear; `flask scanners
rotate-keys` re-encrypts them with the ring's first key."""
from __future__ import annotations

import re

import flask_migrate
from sqlalchemy import select, text

from portal import create_app
from portal import keyring
from portal.extensions import db
from portal.labs.models import LabSecret
from tests.dispatch.conftest import SECRET
from tests.test_migrations import _logging_kept


def _raw_secrets() -> list[str]:
    return list(db.session.execute(text("SELECT secret FROM lab_secret ORDER BY id")).scalars())


def test_the_database_holds_no_signing_secret_in_clear(client, login, world):
    lab = world.labs["api"]
    login("admin")
    page = client.post(f"/labs/{lab.id}/secrets").get_data(as_text=True)
    shown = re.search(r'value="(whsec_[^"]+)"', page).group(1)
    raw = _raw_secrets()
    assert len(raw) == 2
    for stored in raw:
        assert stored.startswith("gAAAA") and "whsec_" not in stored
        assert SECRET not in stored and shown not in stored
    assert sorted(keyring.decrypt_text(s) for s in raw) == sorted([SECRET, shown])
    db.session.expire_all()
    assert sorted(s.secret for s in db.session.scalars(select(LabSecret))) == sorted([SECRET, shown])


def test_the_rotation_command_re_encrypts_lab_secrets(app, world, monkeypatch):
    old_key = app.config["SCANNER_CREDENTIALS_KEYS"]
    before = _raw_secrets()
    new_key = keyring.new_key()
    monkeypatch.setitem(app.config, "SCANNER_CREDENTIALS_KEYS", f"{new_key},{old_key}")
    result = app.test_cli_runner().invoke(args=["scanners", "rotate-keys"])
    assert result.exit_code == 0, result.output
    assert "1 lab signing secret(s)" in result.output
    after = _raw_secrets()
    assert after != before
    monkeypatch.setitem(app.config, "SCANNER_CREDENTIALS_KEYS", new_key)  # the old key dropped
    db.session.expire_all()
    assert [s.secret for s in db.session.scalars(select(LabSecret))] == [SECRET]
    rows = db.session.execute(text("SELECT action, after FROM audit_event WHERE action = 'lab.secrets_rotated'")).all()
    assert len(rows) == 1 and "whsec_" not in rows[0].after


def test_migration_0010_encrypts_the_secrets_that_were_in_clear(tmp_path):
    url = f"sqlite:///{tmp_path / 'upgrade.sqlite3'}"
    app = create_app({"TESTING": True, "SECRET_KEY": "m", "SQLALCHEMY_DATABASE_URI": url,
                      "RATELIMIT_STORAGE_URI": "memory://", "REDIS_URL": "", "MAIL_BACKEND": "devmailbox"})
    with _logging_kept(), app.app_context():
        try:
            flask_migrate.upgrade(revision="0009")
            db.session.execute(text("INSERT INTO organization (id, name) VALUES (1, 'Org')"))
            db.session.execute(text(
                "INSERT INTO lab (id, organization_id, name, channel, contact_name, email, cc_emails, phone, address,"
                " api_url, active, notes) VALUES (1, 1, 'Lab', 'api', '', '', '', '', '', 'https://lab.test', 1, '')"))
            db.session.execute(text("INSERT INTO lab_secret (lab_id, secret, created_at) VALUES (1, :s, '2026-01-01')"),
                               {"s": SECRET})
            db.session.commit()
            flask_migrate.upgrade()
            [stored] = db.session.execute(text("SELECT secret FROM lab_secret")).scalars()
            assert stored.startswith("gAAAA") and "whsec_" not in stored
            assert keyring.decrypt_text(stored) == SECRET
            assert db.session.scalar(select(LabSecret.secret)) == SECRET
            flask_migrate.upgrade()  # again: nothing to do, nothing encrypted twice
            assert db.session.execute(text("SELECT secret FROM lab_secret")).scalar() == stored
            flask_migrate.downgrade(revision="0009")
            assert db.session.execute(text("SELECT secret FROM lab_secret")).scalar() == SECRET
        finally:
            db.session.remove()
            db.engine.dispose()
