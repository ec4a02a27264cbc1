"""Sessions end on the server (ASVS 3.3): a copy of the session cookie taken before sign-out, a
password change, an admin's deactivation or "sign out everywhere" opens nothing afterwards; a
session ends after SESSION_IDLE_MINUTES without activity (background polls are not activity)
and SESSION_MAX_HOURS after sign-in, whatever the activity."""
from __future__ import annotations

import datetime as dt
import re

import time_machine
from sqlalchemy import select

from portal.audit.models import AuditEvent
from portal.auth.models import UserSession
from portal.extensions import db
from portal.mail.models import MailMessage
from tests import factories
from tests.conftest import Client


def _sign_in(client, user, password=factories.PASSWORD):
    client._token = None
    response = client.post("/login", {"email": user.email, "password": password})
    client._token = None
    return response


def _cookie(client) -> str:
    return client.raw.get_cookie("session").value


def _browser_with(app, cookie: str) -> Client:
    """Another browser presenting a copy of someone's session cookie."""
    other = Client(app.test_client())
    other.raw.set_cookie("session", cookie)
    return other


def _signed_in(client) -> bool:
    response = client.get("/")
    return response.status_code == 200


def _audit(action: str) -> list[AuditEvent]:
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def test_a_cookie_copied_before_sign_out_no_longer_works_after_it(app, client, world):
    user = world.users["coordinator"]
    assert _sign_in(client, user).status_code == 302
    copy = _cookie(client)
    thief = _browser_with(app, copy)
    assert _signed_in(thief)  # the copy works while the session lives

    assert client.post("/logout").status_code == 302
    assert not _signed_in(client)
    thief = _browser_with(app, copy)
    response = thief.get("/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert thief.hx("/patients").status_code == 401
    row = db.session.scalar(select(UserSession).where(UserSession.user_id == user.id))
    assert row.ended_at is not None and row.end_reason == "signed_out"
    assert _audit("auth.logout")[-1].after == f'{{"session_id":{row.id}}}'


def test_only_the_keys_hash_is_stored(client, world):
    user = world.users["coordinator"]
    _sign_in(client, user)
    with client.raw.session_transaction() as s:
        key = s["sid"]
    row = db.session.scalar(select(UserSession).where(UserSession.user_id == user.id))
    assert key not in row.key_hash and len(row.key_hash) == 64
    from portal.tokens import hash_token

    assert row.key_hash == hash_token(key)


def test_a_cookie_that_names_a_user_without_a_session_key_opens_nothing(app, client, world):
    """A cookie signed with the right SECRET_KEY that says only "user 1" (as Flask-Login's
    cookie did before) is not a session."""
    user = world.users["coordinator"]
    _sign_in(client, user)
    with client.raw.session_transaction() as s:
        s.pop("sid")
    assert not _signed_in(client)
    with client.raw.session_transaction() as s:
        s["_user_id"] = str(user.id)
        s["sid"] = "A" * 43
    assert not _signed_in(client)


def test_sessions_of_one_person_are_separate(app, client, world):
    """Signing out on one browser leaves the person's other sessions alone."""
    user = world.users["coordinator"]
    phone = Client(app.test_client())
    _sign_in(phone, user)
    _sign_in(client, user)
    client.post("/logout")
    assert _signed_in(phone)


def test_sign_out_everywhere_ends_every_session_and_every_copy(app, client, world):
    user = world.users["coordinator"]
    phone = Client(app.test_client())
    _sign_in(phone, user)
    phone_copy = _cookie(phone)
    _sign_in(client, user)
    page = client.get("/account")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Sign out everywhere" in html and "this browser" in html
    assert html.count('<tr') == 3  # the header and two sessions
    assert 'href="/account"' in html  # the top bar links to it

    response = client.post("/account/sign-out-everywhere")
    assert response.status_code == 303 and response.headers["Location"] == "/login"
    assert "You are signed out everywhere (2 sessions ended)." in client.get("/login").get_data(as_text=True)
    assert not _signed_in(client) and not _signed_in(phone)
    assert not _signed_in(_browser_with(app, phone_copy))
    [event] = _audit("auth.logout_everywhere")
    assert event.actor_id == str(user.id) and event.after == '{"ended_sessions":2}'
    assert {r.end_reason for r in db.session.scalars(select(UserSession))} == {"signed_out_everywhere"}


def test_sign_out_everywhere_needs_the_csrf_token(client, world):
    _sign_in(client, world.users["coordinator"])
    assert client.post("/account/sign-out-everywhere", csrf=False).status_code == 400
    assert _signed_in(client)


def test_a_password_change_ends_every_session(app, client, login, world):
    user = world.users["coordinator"]
    desk = Client(app.test_client())
    _sign_in(desk, user)
    copy = _cookie(desk)

    login("admin")
    assert client.post(f"/admin/users/{user.id}/password-link").status_code == 303
    mail = db.session.scalars(select(MailMessage).order_by(MailMessage.id.desc())).first()
    token = re.search(r"/set-password/([A-Za-z0-9_-]{43})", mail.text_body).group(1)
    stranger = Client(app.test_client())
    done = stranger.post(f"/set-password/{token}", {"password": "a brand new password", "confirm": "a brand new password"})
    assert done.status_code == 303

    assert not _signed_in(desk)
    assert not _signed_in(_browser_with(app, copy))
    assert "Your password was changed" in desk.get("/login").get_data(as_text=True)
    assert '"ended_sessions":1' in _audit("user.password_set")[-1].after
    assert _sign_in(desk, user, "a brand new password").status_code == 302


def test_an_admins_deactivation_ends_every_session(app, client, login, world):
    both = factories.user("both@test.test", [(world.practice, factories.Role.COORDINATOR),
                                            (world.other_practice, factories.Role.MANAGER)])
    db.session.commit()
    desk = Client(app.test_client())
    _sign_in(desk, both)
    copy = _cookie(desk)
    assert _signed_in(desk)

    login("admin")
    assert client.post(f"/admin/users/{both.id}/deactivate").status_code == 303
    # Still a member of the other practice, yet the session that could open this one is gone.
    assert not _signed_in(desk) and not _signed_in(_browser_with(app, copy))
    assert '"ended_sessions":1' in _audit("user.deactivate")[-1].after
    assert _sign_in(desk, both).status_code == 302  # signs in again to what is left


def _at(start: dt.datetime, **delta):
    return time_machine.travel(start + dt.timedelta(**delta), tick=False)


def test_a_session_ends_after_the_idle_timeout(app, client, world):
    start = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
    user = world.users["coordinator"]
    with _at(start):
        _sign_in(client, user)
    copy = _cookie(client)
    with _at(start, minutes=29):
        assert _signed_in(client)  # activity: the 30 minutes start again
    with _at(start, minutes=58):
        assert _signed_in(client)
    with _at(start, minutes=58 + 31):
        response = client.get("/patients")
        assert response.status_code == 302 and "/login" in response.headers["Location"]
        assert "You were signed out after 30 minutes without activity." in client.get("/login").get_data(as_text=True)
        assert not _signed_in(_browser_with(app, copy))


def test_the_idle_timeout_is_a_setting(app, client, world, monkeypatch):
    monkeypatch.setitem(app.config, "SESSION_IDLE_MINUTES", 5)
    start = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
    with _at(start):
        _sign_in(client, world.users["coordinator"])
    with _at(start, minutes=4):
        assert _signed_in(client)
    with _at(start, minutes=10):
        assert not _signed_in(client)


def test_the_boards_poll_does_not_keep_a_session_alive(app, client, world):
    start = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
    with _at(start):
        _sign_in(client, world.users["coordinator"])
        page = client.get("/").get_data(as_text=True)
    stamp = re.search(r'data-stamp="(\d+)"', page).group(1)
    for minute in range(2, 30, 2):  # a board left open on a screen polls all along
        with _at(start, minutes=minute):
            assert client.hx(f"/?since={stamp}").status_code == 204
    with _at(start, minutes=31):
        poll = client.hx(f"/?since={stamp}")
        assert poll.status_code == 401 and poll.headers["HX-Redirect"].startswith("/login")


def test_a_session_ends_at_its_absolute_lifetime_whatever_the_activity(app, client, world, monkeypatch):
    start = dt.datetime(2026, 12, 1, 7, 0, tzinfo=dt.UTC)
    with _at(start):
        _sign_in(client, world.users["coordinator"])
    for minutes in range(20, 12 * 60, 20):
        with _at(start, minutes=minutes):
            assert _signed_in(client), minutes
    with _at(start, hours=12):
        assert not _signed_in(client)
        assert "Your session reached its 12-hour limit." in client.get("/login").get_data(as_text=True)


def test_the_absolute_lifetime_is_a_setting(app, client, world, monkeypatch):
    monkeypatch.setitem(app.config, "SESSION_MAX_HOURS", 1)
    start = dt.datetime(2026, 12, 1, 7, 0, tzinfo=dt.UTC)
    with _at(start):
        _sign_in(client, world.users["coordinator"])
    with _at(start, minutes=25):
        assert _signed_in(client)
    with _at(start, minutes=50):
        assert _signed_in(client)
    with _at(start, minutes=61):
        assert not _signed_in(client)


def test_the_account_page_lists_only_live_sessions(app, client, world):
    user = world.users["coordinator"]
    old = Client(app.test_client())
    _sign_in(old, user)
    old.post("/logout")
    _sign_in(client, user)
    html = client.get("/account").get_data(as_text=True)
    assert html.count("<tr") == 2 and user.email in html and "Main Street Dental" in html
