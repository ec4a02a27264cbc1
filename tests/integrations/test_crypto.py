"""Scanner credentials are encrypted at rest and survive a key rotation."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from portal import keyring as crypto
from portal.extensions import db
from tests import factories


def test_credentials_are_stored_encrypted_and_read_back(app, world):
    scanner = factories.integration(world.practice)
    scanner.credentials = crypto.seal({"client_id": "abc", "client_secret": "s3cret-value"})
    db.session.commit()

    stored = db.session.execute(text("SELECT credentials FROM scanner_integration")).scalar()
    assert "s3cret-value" not in stored and stored.startswith("gAAAA")
    assert crypto.unseal(stored) == {"client_id": "abc", "client_secret": "s3cret-value"}
    assert crypto.seal({}) == "" and crypto.unseal("") == {}


def test_a_rotation_reads_old_rows_and_rewrites_them_with_the_new_key(app, monkeypatch):
    old_key, new_key = crypto.new_key(), crypto.new_key()
    with app.app_context():
        monkeypatch.setitem(app.config, "SCANNER_CREDENTIALS_KEYS", old_key)
        sealed = crypto.seal({"refresh_token": "r1"})
        monkeypatch.setitem(app.config, "SCANNER_CREDENTIALS_KEYS", f"{new_key}, {old_key}")
        assert crypto.unseal(sealed) == {"refresh_token": "r1"}
        rotated = crypto.rotate(sealed)
        monkeypatch.setitem(app.config, "SCANNER_CREDENTIALS_KEYS", new_key)
        assert crypto.unseal(rotated) == {"refresh_token": "r1"}
        with pytest.raises(crypto.CredentialsError, match="enter them again"):
            crypto.unseal(sealed)


@pytest.mark.parametrize("keys, message", [("", "not set"), ("not-a-key", "not a Fernet key")])
def test_a_missing_or_broken_key_says_so(app, monkeypatch, keys, message):
    with app.app_context():
        monkeypatch.setitem(app.config, "SCANNER_CREDENTIALS_KEYS", keys)
        with pytest.raises(crypto.CredentialsError, match=message):
            crypto.seal({"a": 1})
