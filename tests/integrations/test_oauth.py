"""Vendor tokens: refreshed before they expire, and exactly once when several workers find them
expired together (docs/reliability.md W7). The vendor's side of this is tested over HTTP against the
sandbox in the adapters' tests; here the refresh is a function that counts its calls."""
from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from portal.extensions import db
from portal.integrations import oauth
from portal.integrations.http import VendorError
from portal.practices.models import utcnow
from tests import factories


@pytest.fixture()
def expired(world):
    scanner = factories.integration(world.practice)
    oauth.set_tokens(scanner, {"access_token": "old-access", "refresh_token": "r1", "expires_in": 3600})
    scanner.token_expires_at = utcnow() - dt.timedelta(seconds=1)
    db.session.commit()
    return scanner


def test_a_fresh_token_is_used_as_it_is(world):
    scanner = factories.integration(world.practice)
    oauth.set_tokens(scanner, {"access_token": "a", "refresh_token": "r", "expires_in": 3600})
    db.session.commit()

    tokens = oauth.access_token(scanner.id, lambda refresh: pytest.fail("no refresh needed"))

    assert tokens.access_token == "a"


def test_two_workers_finding_an_expired_token_refresh_it_once(app, expired):
    calls, results = [], []
    integration_id = expired.id  # read here: the fixture's ORM object belongs to this thread's session

    def refresh(refresh_token):
        calls.append(refresh_token)
        time.sleep(0.3)  # the vendor takes its time: the other worker must wait, not refresh too
        return {"access_token": "new-access", "refresh_token": "r2", "expires_in": 3600}

    integration_id = expired.id  # read here: in the threads it would load through this thread's session

    def worker():
        with app.app_context():
            results.append(oauth.access_token(integration_id, refresh).access_token)
            db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert calls == ["r1"]
    assert results == ["new-access"] * 3
    assert oauth.read(integration_id).refresh_token == "r2"


def test_a_token_the_vendor_refused_is_refreshed_once_even_before_it_expires(world):
    scanner = factories.integration(world.practice)
    oauth.set_tokens(scanner, {"access_token": "a1", "refresh_token": "r1", "expires_in": 3600})
    db.session.commit()
    seen = oauth.read(scanner.id)
    calls = []

    def refresh(token):
        calls.append(token)
        return {"access_token": "a2", "expires_in": 3600}  # no new refresh token: keep the old one

    first = oauth.access_token(scanner.id, refresh, stale_version=seen.version)
    second = oauth.access_token(scanner.id, refresh, stale_version=seen.version)  # a late second 401

    assert (first.access_token, second.access_token, calls) == ("a2", "a2", ["r1"])
    assert first.refresh_token == "r1"


def test_a_failed_refresh_releases_the_lease_for_the_next_try(expired):
    def refuse(token):
        raise VendorError("the vendor refused the refresh token", "auth", 401)

    with pytest.raises(VendorError, match="refused"):
        oauth.access_token(expired.id, refuse)

    tokens = oauth.access_token(expired.id, lambda token: {"access_token": "ok", "expires_in": 60 * 60})
    assert tokens.access_token == "ok"


def test_without_a_refresh_token_the_integration_must_be_connected_again(world):
    scanner = factories.integration(world.practice)
    db.session.commit()

    with pytest.raises(VendorError, match="connect the integration again") as info:
        oauth.access_token(scanner.id, lambda token: {})
    assert info.value.kind == "auth"
