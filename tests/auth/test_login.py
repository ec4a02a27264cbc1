"""Signing in and out: argon2 passwords, audited attempts, one path for unknown emails, inactive
users, the rate limit and safe redirects."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from portal.audit.models import AuditEvent
from portal.extensions import db
from tests import factories

MISMATCH = "That email and password do not match an active account."


def _audit(action: str) -> list[AuditEvent]:
    return db.session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)).all()


def _count() -> int:
    return db.session.scalar(select(func.count()).select_from(AuditEvent))


def _sign_in(client, email, password=factories.PASSWORD, next_url=None, **kw):
    url = "/login" if next_url is None else f"/login?next={next_url}"
    return client.post(url, {"email": email, "password": password}, **kw)


def test_the_login_page_renders(client, db):
    page = client.get("/login")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'name="email"' in html and 'name="password"' in html and 'name="csrf_token"' in html


def test_passwords_are_stored_as_argon2id(world):
    assert world.users["coordinator"].password_hash.startswith("$argon2id$")
    assert factories.PASSWORD not in world.users["coordinator"].password_hash


def test_login_succeeds_and_is_audited(client, world):
    user = world.users["coordinator"]
    response = _sign_in(client, user.email)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert client.get("/").status_code == 200

    [row] = _audit("auth.login")
    assert (row.actor_type, row.actor_id, row.actor_label) == ("user", str(user.id), user.email)
    assert (row.entity_type, row.entity_id, row.outcome) == ("user", str(user.id), "ok")
    assert row.source == "POST /login" and row.ip == "127.0.0.1" and row.correlation_id
    assert _audit("auth.login_failed") == []


def test_the_email_is_matched_without_regard_to_case_or_spaces(client, world):
    response = _sign_in(client, "  COORDINATOR@Test.Test ")
    assert response.status_code == 302


def test_a_wrong_password_is_refused_and_audited(client, world):
    user = world.users["coordinator"]
    response = _sign_in(client, user.email, "wrong password")
    assert response.status_code == 422
    assert MISMATCH in response.get_data(as_text=True)
    assert client.get("/").status_code == 302  # still signed out
    [row] = _audit("auth.login_failed")
    assert (row.entity_id, row.outcome, row.actor_type) == (str(user.id), "denied", "system")
    assert "wrong password" not in row.after and "wrong password" not in row.before
    assert _audit("auth.login") == []


def test_an_unknown_email_takes_the_same_path(client, world, monkeypatch):
    """Same status, same message, same page, and one argon2 verification either way (so the
    timing does not tell whether the account exists)."""
    from portal.auth import services

    calls = []
    real = services.check_password
    monkeypatch.setattr(services, "check_password", lambda stored, pw: calls.append(stored) or real(stored, pw))

    known = _sign_in(client, world.users["coordinator"].email, "wrong password")
    unknown = _sign_in(client, "nobody@test.test", "wrong password")

    assert known.status_code == unknown.status_code == 422
    strip = re.compile(r'value="[^"]*"|"X-CSRFToken": "[^"]*"')  # the token and the echoed email differ
    assert strip.sub("", known.get_data(as_text=True)) == strip.sub("", unknown.get_data(as_text=True))
    assert calls[0] == world.users["coordinator"].password_hash
    from portal.auth.passwords import DUMMY_HASH

    assert calls[1] == DUMMY_HASH and len(calls) == 2
    rows = _audit("auth.login_failed")
    assert [r.entity_id for r in rows] == [str(world.users["coordinator"].id), ""]
    assert '"email":"nobody@test.test"' in rows[1].after and rows[1].outcome == "denied"


def test_an_inactive_user_is_refused_even_with_the_right_password(client, world):
    user = world.users["coordinator"]
    user.active = False
    db.session.commit()
    response = _sign_in(client, user.email)
    assert response.status_code == 422 and MISMATCH in response.get_data(as_text=True)
    assert client.get("/").status_code == 302
    assert [r.entity_id for r in _audit("auth.login_failed")] == [str(user.id)]


def test_a_user_deactivated_while_signed_in_loses_access(client, login, world):
    user = login("coordinator")
    assert client.get("/").status_code == 200
    user.active = False
    db.session.commit()
    response = client.get("/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


@pytest.mark.parametrize("form", [
    {"email": "", "password": ""},
    {"email": "coordinator@test.test", "password": ""},
    {"email": "x" * 300 + "@test.test", "password": "pw"},
])
def test_an_incomplete_form_is_422_and_writes_nothing(client, world, form):
    before = _count()
    response = client.post("/login", form)
    assert response.status_code == 422
    assert _count() == before


def test_login_is_rate_limited(app, client, world, monkeypatch):
    monkeypatch.setitem(app.config, "LOGIN_RATE_LIMIT", "3 per minute")
    email = world.users["coordinator"].email
    for _ in range(3):
        assert _sign_in(client, email, "guess").status_code == 422
    rows = _count()
    blocked = _sign_in(client, email, factories.PASSWORD)  # even the right password now
    assert blocked.status_code == 429
    assert "Too many attempts" in blocked.get_data(as_text=True)
    assert _count() == rows  # a refused attempt never reaches the password check
    assert client.get("/login").status_code == 200  # the page itself stays reachable
    assert client.hx("/").status_code == 401  # and nobody got in


def test_the_rate_limit_counts_per_client_address(app, client, world, monkeypatch):
    monkeypatch.setitem(app.config, "LOGIN_RATE_LIMIT", "2 per minute")
    email = world.users["coordinator"].email
    for _ in range(2):
        _sign_in(client, email, "guess")
    assert _sign_in(client, email, "guess").status_code == 429
    other = client.raw.application.test_client()
    from tests.conftest import Client

    elsewhere = Client(other)
    response = elsewhere.post("/login", {"email": email, "password": factories.PASSWORD},
                              environ_base={"REMOTE_ADDR": "127.0.0.2"})
    assert response.status_code == 302


@pytest.mark.parametrize("target", [
    "//evil.test", "//evil.test/", "https://evil.test/", "http:evil.test", "/\\evil.test", "\\\\evil.test",
    "/%5Cevil.test", "%2F%2Fevil.test", "javascript:alert(1)", "///evil.test", "/\t/evil.test",
])
def test_next_never_leaves_the_site(client, world, target):
    from urllib.parse import quote, urljoin, urlsplit

    response = _sign_in(client, world.users["coordinator"].email, next_url=quote(target, safe=""))
    assert response.status_code == 302
    location = response.headers["Location"]
    # Resolve it the way a browser does: tabs and newlines dropped, backslashes read as slashes.
    as_browser = re.sub(r"[\t\r\n]", "", location).replace("\\", "/")
    resolved = urlsplit(urljoin("http://localhost/login", as_browser))
    assert (resolved.scheme, resolved.netloc) == ("http", "localhost"), location


def test_next_within_the_site_is_followed(client, world):
    response = _sign_in(client, world.users["coordinator"].email, next_url="/patients%3Fq%3Dada")
    assert response.headers["Location"] == "/patients?q=ada"


def test_anonymous_request_carries_next_to_login(client, world):
    response = client.get("/patients?q=ada")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_signed_in_users_visiting_login_go_to_the_board(client, login):
    login()
    response = client.get("/login")
    assert response.status_code == 302 and response.headers["Location"] == "/"


def test_logout_is_post_only_and_audited(client, login, world):
    user = login()
    assert client.get("/logout").status_code == 405
    assert client.get("/").status_code == 200  # a GET did not sign anyone out
    response = client.post("/logout")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert client.get("/").status_code == 302
    [row] = _audit("auth.logout")
    assert row.actor_id == str(user.id)


def test_logout_without_csrf_is_refused(client, login):
    login()
    assert client.post("/logout", csrf=False).status_code == 400
    assert client.get("/").status_code == 200  # still signed in


def test_switching_to_a_practice_you_are_not_in_is_refused(client, login, world):
    login()
    client.post("/practice", {"practice_id": world.other_practice.id})
    html = client.get("/").get_data(as_text=True)
    assert world.practice.name in html
    assert "You are not a member of that practice." in html
