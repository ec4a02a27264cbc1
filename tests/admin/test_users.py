"""The users page (/admin/users): the list, adding people (a new account with a set-password link,
or a membership for an existing account), role changes, deactivation, the last-admin guard,
access (docs/reliability.md F6: admins only, another practice's user is 404), audit rows (A1) and bad input."""
from __future__ import annotations

import re
import threading
import time

import pytest
from sqlalchemy import func, select

from portal.admin.users.models import PasswordLink
from portal.audit.models import AuditEvent
from portal.extensions import db
from portal.mail.models import MailMessage
from portal.practices.models import Membership, Role, User
from tests import factories

LINK = re.compile(r"http://localhost/set-password/([A-Za-z0-9_-]{43})")


def _audit(action: str) -> list[AuditEvent]:
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                   .order_by(AuditEvent.seq)))


def _counts() -> tuple[int, ...]:
    return tuple(db.session.scalar(select(func.count()).select_from(model))
                 for model in (User, Membership, MailMessage, PasswordLink, AuditEvent))


def _member(user: User, practice) -> Membership:
    db.session.expire_all()
    return db.session.scalar(select(Membership).where(Membership.user_id == user.id,
                                                      Membership.practice_id == practice.id))


def _token(mail: MailMessage) -> str:
    return LINK.search(mail.text_body).group(1)


def _add(client, name="Nadia Okafor", email="nadia@test.test", role="coordinator", **kw):
    return client.post("/admin/users/", {"name": name, "email": email, "role": role}, **kw)


# ---- the list ---------------------------------------------------------------------------------------

def test_the_list_shows_this_practice_only_with_role_status_and_last_sign_in(client, login, world):
    admin = login("admin")
    page = client.get("/admin/users/")
    assert page.status_code == 200 and "HX-Request" in page.headers["Vary"]
    html = page.get_data(as_text=True)
    for role in ("coordinator", "manager", "admin"):
        assert f"{role}@test.test" in html
    assert "outsider@test.test" not in html  # another practice's admin
    row = re.search(rf'<tr id="user-{admin.id}".*?</tr>', html, re.S).group(0)
    assert '<option value="admin" selected>' in row and "Active" in row and "you" in row
    db.session.refresh(admin)
    assert admin.last_login_at is not None and f"{admin.last_login_at:%d %b %Y %H:%M}" in row
    manager_row = re.search(rf'<tr id="user-{world.users["manager"].id}".*?</tr>', html, re.S).group(0)
    assert "Never" in manager_row
    # The settings pages share a sub-navigation; the top bar keeps one "Settings" item.
    assert 'href="/admin/practice"' in html and 'aria-current="page">Users</a>' in html
    assert 'href="/admin/users/"' in client.get("/admin/practice").get_data(as_text=True)


def test_names_are_escaped(client, login, world):
    login("admin")
    _add(client, name='<script>alert(1)</script>" onmouseover="x', email="xss@test.test")
    html = client.get("/admin/users/").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34; onmouseover=&#34;x" in html


# ---- access --------------------------------------------------------------------------------------------

ROUTES = [("get", "/admin/users/"), ("post", "/admin/users/"), ("post", "/admin/users/{id}/role"),
          ("post", "/admin/users/{id}/deactivate"), ("post", "/admin/users/{id}/reactivate"),
          ("post", "/admin/users/{id}/password-link")]


@pytest.mark.parametrize("role", ["coordinator", "manager"])
def test_only_admins_reach_the_users_routes(client, login, world, role):
    login(role)
    before = _counts()
    target = world.users["coordinator"].id
    for method, url in ROUTES:
        response = getattr(client, method)(url.format(id=target), **({"data": {"role": "admin"}}
                                                                       if method == "post" else {}))
        assert response.status_code == 403, (method, url)
    assert _counts() == before
    assert "/admin/users/" not in client.get("/").get_data(as_text=True)


def test_signed_out_is_sent_to_sign_in(client, world):
    response = client.get("/admin/users/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_another_practices_user_is_not_found(client, login, world):
    login("admin")
    before = _counts()
    for user_id in (world.users["outsider"].id, 9999):
        for method, url in ROUTES[2:]:
            assert client.post(url.format(id=user_id), {"role": "coordinator"}).status_code == 404
            assert client.post(url.format(id=user_id), {"role": "coordinator"}, htmx=True).status_code == 404
    assert _counts() == before
    assert _member(world.users["outsider"], world.other_practice).role is Role.ADMIN


def test_every_change_needs_the_csrf_token(client, login, world):
    login("admin")
    before = _counts()
    coordinator = world.users["coordinator"]
    assert _add(client, csrf=False).status_code == 400
    assert client.post(f"/admin/users/{coordinator.id}/role", {"role": "admin"}, csrf=False).status_code == 400
    assert client.post(f"/admin/users/{coordinator.id}/deactivate", csrf=False).status_code == 400
    assert client.post(f"/admin/users/{coordinator.id}/password-link", csrf=False).status_code == 400
    assert _counts() == before
    assert _member(coordinator, world.practice).role is Role.COORDINATOR


# ---- adding people -------------------------------------------------------------------------------------

def test_a_new_person_gets_an_account_and_a_one_time_link_by_email(client, login, world):
    login("admin")
    response = _add(client, email="  Nadia@Test.test ", role="manager")
    assert response.status_code == 303 and response.headers["Location"] == "/admin/users/"
    page = client.get("/admin/users/").get_data(as_text=True)
    assert "Nadia Okafor added as manager" in page and "nadia@test.test" in page

    user = db.session.scalar(select(User).where(User.email == "nadia@test.test"))
    assert user.active and _member(user, world.practice).role is Role.MANAGER
    assert user.password_hash.startswith("$argon2id$")  # a random one nobody knows, until the link
    mail = db.session.scalar(select(MailMessage).where(MailMessage.kind == "password_link"))
    assert mail.to_addrs == "nadia@test.test" and mail.practice_id == world.practice.id
    token = _token(mail)
    assert mail.link_secret == token and f"/set-password/{token}" in mail.html_body  # dropped once delivered
    assert token not in mail.stored_text + mail.stored_html  # the stored bodies hold a placeholder
    link = db.session.scalar(select(PasswordLink).where(PasswordLink.user_id == user.id))
    row = db.session.execute(select(*PasswordLink.__table__.c).where(PasswordLink.id == link.id)).one()
    assert all(token not in str(value) for value in row)  # only the hash is kept

    created = _audit("user.create")[-1]
    assert created.entity_id == str(user.id) and created.practice_id == world.practice.id
    assert created.actor_id == str(world.users["admin"].id)
    assert '"role":"manager"' in created.after and '"email":"nadia@test.test"' in created.after
    assert _audit("user.password_link_sent")[-1].entity_id == str(user.id)
    for event in db.session.scalars(select(AuditEvent)):
        assert token not in event.before + event.after + event.source


def test_an_existing_account_gets_a_membership_not_a_second_account(client, login, world):
    """A DSO: the same person works at another practice of the group."""
    outsider = world.users["outsider"]
    login("admin")
    users_before = db.session.scalar(select(func.count()).select_from(User))
    response = _add(client, name="Someone Else", email="OUTSIDER@test.test", role="coordinator")
    assert response.status_code == 303
    page = client.get("/admin/users/").get_data(as_text=True)
    assert "already has a Lab Manager account, so no second one was made" in page
    assert db.session.scalar(select(func.count()).select_from(User)) == users_before
    assert _member(outsider, world.practice).role is Role.COORDINATOR
    assert _member(outsider, world.other_practice).role is Role.ADMIN  # untouched
    assert db.session.get(User, outsider.id).name == "Outsider"  # their name is theirs
    assert db.session.scalar(select(func.count()).select_from(MailMessage)) == 0  # no link needed
    event = _audit("user.membership_add")[-1]
    assert event.entity_id == str(outsider.id) and '"member":false' in event.before
    assert '"role":"coordinator"' in event.after and event.practice_id == world.practice.id

    # They sign in with the password they have and can now switch to this practice.
    client.post("/logout")
    client._token = None
    assert client.post("/login", {"email": outsider.email, "password": factories.PASSWORD}).status_code == 302
    client.post("/practice", {"practice_id": world.practice.id})
    assert client.get("/").status_code == 200
    assert client.get("/admin/users/").status_code == 403  # a coordinator here


@pytest.mark.parametrize("form, field, message", [
    ({"email": "not-an-email"}, "email", "“not-an-email” is not an email address (An email address must have an @-sign.)."),
    ({"email": ""}, "email", "Enter their email address."),
    ({"name": ""}, "name", "Enter their name."),
    ({"role": "owner"}, "role", "Not a valid choice."),
    ({"email": "Manager@test.test"}, "email", "Manager is already in this practice as manager."),
])
def test_bad_input_is_422_beside_the_field_and_writes_nothing(client, login, world, form, field, message):
    login("admin")
    before = _counts()
    data = {"name": "Nadia Okafor", "email": "nadia@test.test", "role": "coordinator"} | form
    response = client.post("/admin/users/", data)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert f'<p class="error" id="{field}-error">{message}</p>' in html.replace("&#39;", "'")
    assert _counts() == before


def test_every_problem_shows_at_once(client, login, world):
    login("admin")
    html = client.post("/admin/users/", {"name": "", "email": "coordinator@test.test",
                                         "role": "owner"}).get_data(as_text=True)
    assert 'id="name-error"' in html and 'id="role-error"' in html
    assert "Coordinator is already in this practice as coordinator." in html


def test_a_deactivated_member_is_reactivated_not_added_again(client, login, world):
    login("admin")
    coordinator = world.users["coordinator"]
    client.post(f"/admin/users/{coordinator.id}/deactivate")
    before = _counts()
    response = _add(client, email=coordinator.email)
    assert response.status_code == 422
    assert "is in the list as deactivated: reactivate them there instead." in response.get_data(as_text=True)
    assert _counts() == before


# ---- roles ------------------------------------------------------------------------------------------------

def test_role_change_full_page(client, login, world):
    login("admin")
    coordinator = world.users["coordinator"]
    response = client.post(f"/admin/users/{coordinator.id}/role", {"role": "manager"})
    assert response.status_code == 303 and response.headers["Location"] == "/admin/users/"
    assert "Coordinator is now manager." in client.get("/admin/users/").get_data(as_text=True)
    assert _member(coordinator, world.practice).role is Role.MANAGER
    event = _audit("user.role_change")[-1]
    assert (event.before, event.after) == ('{"role":"coordinator"}', '{"role":"manager"}')
    assert (event.entity_type, event.entity_id, event.practice_id) == ("user", str(coordinator.id),
                                                                       world.practice.id)
    assert event.source == f"POST /admin/users/{coordinator.id}/role"

    # The same role again changes nothing and writes no row.
    client.post(f"/admin/users/{coordinator.id}/role", {"role": "manager"})
    assert len(_audit("user.role_change")) == 1


def test_role_change_inline_answers_the_row(client, login, world):
    login("admin")
    coordinator = world.users["coordinator"]
    response = client.post(f"/admin/users/{coordinator.id}/role", {"role": "admin"}, htmx=True)
    assert response.status_code == 200 and "HX-Request" in response.headers["Vary"]
    html = response.get_data(as_text=True)
    assert html.lstrip().startswith(f'<tr id="user-{coordinator.id}"') and "<html" not in html
    assert '<option value="admin" selected>' in html and "Coordinator is now admin." in html
    assert _member(coordinator, world.practice).role is Role.ADMIN


def test_an_unknown_role_is_422_in_the_row_and_changes_nothing(client, login, world):
    login("admin")
    coordinator = world.users["coordinator"]
    before = _counts()
    row = client.post(f"/admin/users/{coordinator.id}/role", {"role": "owner"}, htmx=True)
    assert row.status_code == 422
    html = row.get_data(as_text=True)
    assert "Not a valid choice." in html and 'aria-invalid="true"' in html and "<html" not in html
    page = client.post(f"/admin/users/{coordinator.id}/role", {"role": "owner"})
    assert page.status_code == 422 and "Not a valid choice." in page.get_data(as_text=True)
    assert "<html" in page.get_data(as_text=True)
    assert _counts() == before and _member(coordinator, world.practice).role is Role.COORDINATOR


# ---- the last admin --------------------------------------------------------------------------------------

LAST = "You are the last admin of Main Street Dental"


def test_the_last_admin_cannot_demote_or_deactivate_themselves(client, login, world):
    admin = login("admin")
    before = _counts()
    for url, data in ((f"/admin/users/{admin.id}/role", {"role": "coordinator"}),
                      (f"/admin/users/{admin.id}/deactivate", {})):
        page = client.post(url, data)
        assert page.status_code == 409 and LAST in page.get_data(as_text=True)
        row = client.post(url, data, htmx=True)
        assert row.status_code == 409 and LAST in row.get_data(as_text=True)
        assert row.get_data(as_text=True).lstrip().startswith(f'<tr id="user-{admin.id}"')
    assert _counts() == before
    member = _member(admin, world.practice)
    assert member.role is Role.ADMIN and member.active
    assert client.get("/admin/users/").status_code == 200


def test_an_admin_steps_down_once_there_is_another(client, login, world):
    admin = login("admin")
    manager = world.users["manager"]
    assert client.post(f"/admin/users/{manager.id}/role", {"role": "admin"}).status_code == 303
    response = client.post(f"/admin/users/{admin.id}/role", {"role": "coordinator"}, htmx=True)
    assert response.status_code == 204 and response.headers["HX-Redirect"] == "/"  # not their page now
    assert _member(admin, world.practice).role is Role.COORDINATOR
    assert client.get("/admin/users/").status_code == 403
    # And the new admin cannot leave the practice without one.
    login("manager")
    assert client.post(f"/admin/users/{manager.id}/deactivate").status_code == 409


def test_a_switched_off_account_does_not_count_as_an_admin(client, login, world):
    admin = login("admin")
    other = factories.user("second-admin@test.test", [(world.practice, Role.ADMIN)])
    other.active = False
    db.session.commit()
    assert client.post(f"/admin/users/{admin.id}/role", {"role": "manager"}).status_code == 409
    html = client.get("/admin/users/").get_data(as_text=True)
    assert "Account switched off" in html


def test_two_admins_demoting_each_other_at_once_leave_one(app, db, world, database_url):
    """The guard locks the practice row, so the second demotion waits for the first and then
    sees it: without the lock both would read "another admin exists" and both would pass."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite allows one writer at a time, so two admins can't race; set TEST_DATABASE_URL "
                    "to a PostgreSQL database to run this")
    from portal.admin.users import services
    from portal.practices.models import Practice

    first, second = world.users["admin"], factories.user("admin2@test.test", [(world.practice, Role.ADMIN)])
    db.session.commit()
    ids = {"practice": world.practice.id, "first": first.id, "second": second.id}
    passed_guard = threading.Event()
    outcome: dict[str, str] = {}

    def demote(name: str) -> None:
        try:
            with app.app_context():
                if name == "second":
                    passed_guard.wait(timeout=10)
                practice = db.session.get(Practice, ids["practice"])
                member = services.membership(practice.id, ids[name])
                services.change_role(practice, member, Role.COORDINATOR, by=member.user)
                if name == "first":
                    passed_guard.set()
                    time.sleep(0.5)  # hold the transaction open while the other one tries
                db.session.commit()
                outcome[name] = "demoted"
        except services.LastAdmin:
            outcome[name] = "refused"
        except BaseException as exc:  # noqa: BLE001  (reported to the test thread below)
            outcome[name] = repr(exc)
        finally:
            passed_guard.set()

    threads = [threading.Thread(target=demote, args=(name,)) for name in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert outcome == {"first": "demoted", "second": "refused"}
    db.session.expire_all()
    admins = db.session.scalar(select(func.count()).select_from(Membership).where(
        Membership.practice_id == world.practice.id, Membership.role == Role.ADMIN))
    assert admins == 1


# ---- deactivation --------------------------------------------------------------------------------------------

def _sign_in(client, user, password=factories.PASSWORD):
    client.post("/logout")
    client._token = None
    response = client.post("/login", {"email": user.email, "password": password})
    client._token = None
    return response


def test_a_deactivated_user_cannot_sign_in_until_reactivated(app, client, login, world):
    coordinator = world.users["coordinator"]
    # The coordinator is signed in elsewhere when the admin deactivates them.
    from tests.conftest import Client

    elsewhere = Client(app.test_client())
    assert _sign_in(elsewhere, coordinator).status_code == 302
    assert elsewhere.get("/").status_code == 200

    login("admin")
    response = client.post(f"/admin/users/{coordinator.id}/deactivate", htmx=True)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Deactivated" in html and "Reactivate" in html and "can no longer open Main Street Dental" in html
    event = _audit("user.deactivate")[-1]
    assert '"active":true' in event.before and '"active":false' in event.after
    assert db.session.get(User, coordinator.id).active  # the account stays; the membership is off

    assert elsewhere.get("/").status_code == 302  # their session ends with their access
    refused = _sign_in(elsewhere, coordinator)
    assert refused.status_code == 422
    assert "do not match an active account" in refused.get_data(as_text=True)
    assert _audit("auth.login_failed")[-1].entity_id == str(coordinator.id)

    login("admin")
    assert client.post(f"/admin/users/{coordinator.id}/reactivate").status_code == 303
    event = _audit("user.reactivate")[-1]
    assert (event.before, event.after) == ('{"active":false}', '{"active":true}')
    assert _sign_in(elsewhere, coordinator).status_code == 302


def test_deactivation_in_one_practice_leaves_the_others(client, login, world):
    both = factories.user("both@test.test", [(world.practice, Role.COORDINATOR),
                                            (world.other_practice, Role.MANAGER)])
    db.session.commit()
    login("admin")
    assert client.post(f"/admin/users/{both.id}/deactivate").status_code == 303
    assert _sign_in(client, both).status_code == 302
    page = client.get("/").get_data(as_text=True)
    assert "Other Practice" in page and "Main Street Dental" not in page  # no switcher entry either
    client.post("/practice", {"practice_id": world.practice.id})
    assert "You are not a member of that practice." in client.get("/").get_data(as_text=True)


def test_a_deactivated_member_can_be_reactivated_from_the_row(client, login, world):
    login("admin")
    manager = world.users["manager"]
    client.post(f"/admin/users/{manager.id}/deactivate")
    row = client.post(f"/admin/users/{manager.id}/reactivate", htmx=True)
    assert row.status_code == 200 and "Manager is active here again as manager." in row.get_data(as_text=True)
    assert _member(manager, world.practice).active


# ---- set-password links ---------------------------------------------------------------------------------------

def _new_person(client, login, email="nadia@test.test"):
    login("admin")
    assert _add(client, email=email).status_code == 303
    user = db.session.scalar(select(User).where(User.email == email))
    mail = db.session.scalars(select(MailMessage).order_by(MailMessage.id.desc())).first()
    return user, _token(mail)


def test_the_link_sets_a_password_once(client, login, world):
    user, token = _new_person(client, login)
    client.post("/logout")
    client._token = None
    url = f"/set-password/{token}"
    before = _counts()
    page = client.get(url)
    assert page.status_code == 200 and "Hello Nadia Okafor" in page.get_data(as_text=True)
    assert page.headers["Referrer-Policy"] == "no-referrer" and page.headers["Cache-Control"] == "no-store"
    assert _counts() == before  # opening it changes nothing (mail scanners open links)

    short = client.post(url, {"password": "short", "confirm": "short"})
    assert short.status_code == 422 and "Use at least 12 characters." in short.get_data(as_text=True)
    differ = client.post(url, {"password": "a long enough one", "confirm": "another long one"})
    assert differ.status_code == 422 and "The two passwords differ." in differ.get_data(as_text=True)
    assert _counts() == before

    done = client.post(url, {"password": "teeth and crowns", "confirm": "teeth and crowns"})
    assert done.status_code == 303 and done.headers["Location"] == "/login"
    link = db.session.scalar(select(PasswordLink).where(PasswordLink.user_id == user.id))
    assert link.used_at is not None
    event = _audit("user.password_set")[-1]
    assert event.actor_id == str(user.id) and event.source == f"password-link:{link.id}"
    assert token not in event.source + event.before + event.after

    again = client.get(url)
    assert again.status_code == 410 and "already been used" in again.get_data(as_text=True)
    assert again.headers["Referrer-Policy"] == "no-referrer" and again.headers["Cache-Control"] == "no-store"
    assert client.post(url, {"password": "x" * 12, "confirm": "x" * 12}).status_code == 410
    assert _sign_in(client, user, "teeth and crowns").status_code == 302
    assert client.get("/").status_code == 200


def test_a_new_link_replaces_the_old_one(client, login, world):
    user, first = _new_person(client, login)
    response = client.post(f"/admin/users/{user.id}/password-link", htmx=True)
    assert response.status_code == 200 and "older links no longer work" in response.get_data(as_text=True)
    second = _token(db.session.scalars(select(MailMessage).order_by(MailMessage.id.desc())).first())
    assert second != first
    assert client.get(f"/set-password/{first}").status_code == 410
    assert client.get(f"/set-password/{second}").status_code == 200
    event = _audit("user.password_link_sent")[-1]
    assert '"live_link_ids":[1]' in event.before and '"link_id":2' in event.after


def test_deactivation_revokes_the_link(client, login, world):
    user, token = _new_person(client, login)
    client.post(f"/admin/users/{user.id}/deactivate")
    assert client.get(f"/set-password/{token}").status_code == 410
    # A deactivated member is not sent a link.
    before = _counts()
    response = client.post(f"/admin/users/{user.id}/password-link")
    assert response.status_code == 409 and "reactivate them first" in response.get_data(as_text=True)
    assert _counts() == before


def test_an_expired_link_is_gone(client, login, world):
    user, token = _new_person(client, login)
    link = db.session.scalar(select(PasswordLink).where(PasswordLink.user_id == user.id))
    assert 71 * 3600 < (link.expires_at - link.created_at).total_seconds() <= 72 * 3600
    link.expires_at = link.created_at
    db.session.commit()
    response = client.get(f"/set-password/{token}")
    assert response.status_code == 410 and "It has expired." in response.get_data(as_text=True)


def test_guessing_tokens_is_rate_limited(app, client, world, monkeypatch):
    monkeypatch.setitem(app.config, "TOKEN_GUESS_LIMIT", "3 per minute")
    codes = [client.get(f"/set-password/{'A' * 43}").status_code for _ in range(4)]
    assert codes == [404, 404, 404, 429]
    assert client.get("/set-password/nonsense").status_code == 429


def test_tokens_stay_out_of_the_logs():
    from portal.logfilter import redact

    token = "a" * 43
    assert redact(f'"GET /set-password/{token} HTTP/1.1" 200') == '"GET /set-password/[redacted] HTTP/1.1" 200'
