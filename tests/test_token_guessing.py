"""Every public URL whose path holds a token (a lab's page, a scan file's link, a set-password
link, a scanner's notification address) shares one budget of wrong guesses per address
(TOKEN_GUESS_LIMIT): past it, 429 on all of them. Scanner notification keys used to answer 404
forever."""
from __future__ import annotations

import secrets

import pytest


@pytest.fixture()
def tight(app, monkeypatch):
    monkeypatch.setitem(app.config, "TOKEN_GUESS_LIMIT", "4 per minute")


def _hook(client, key=None):
    return client.raw.post(f"/api/scanners/hooks/{key or secrets.token_urlsafe(32)}", data=b"{}",
                           content_type="application/json")


def test_guessing_scanner_notification_keys_gets_429(client, world, tight):
    codes = [_hook(client).status_code for _ in range(6)]
    assert codes == [404] * 4 + [429] * 2
    refused = _hook(client)
    assert refused.is_json and set(refused.json) == {"error"}  # an /api/ answer stays JSON
    assert "Retry-After" in refused.headers


def test_the_budget_is_shared_by_every_token_url(client, world, tight):
    token = secrets.token_urlsafe(32)
    assert client.get(f"/lab/{token}").status_code == 404
    assert client.get(f"/set-password/{token}").status_code == 404
    assert client.get(f"/scan-files/{token}").status_code == 404
    assert _hook(client).status_code == 404
    # Four wrong guesses, one of each kind: every kind is now held back.
    assert client.get(f"/lab/{secrets.token_urlsafe(32)}").status_code == 429
    assert client.get(f"/set-password/{secrets.token_urlsafe(32)}").status_code == 429
    assert client.get(f"/scan-files/{secrets.token_urlsafe(32)}").status_code == 429
    assert _hook(client).status_code == 429


def test_another_address_keeps_its_own_budget(app, client, world, tight):
    for _ in range(4):
        _hook(client)
    assert _hook(client).status_code == 429
    elsewhere = app.test_client().post(f"/api/scanners/hooks/{secrets.token_urlsafe(32)}", data=b"{}",
                                       environ_base={"REMOTE_ADDR": "127.0.0.9"})
    assert elsewhere.status_code == 404
