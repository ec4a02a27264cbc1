"""F1-F4 across the whole app: every route is behind login unless it is public on purpose, every
POST needs a CSRF token and writes nothing without it, no GET writes, security headers, session
cookie flags and the htmx configuration.

Routes are found by walking app.url_map, so a route added tomorrow is covered without editing
this file. A route that is meant to be public goes in PUBLIC below, on purpose and reviewed."""
from __future__ import annotations

import datetime as dt
import html
import json
import re
from pathlib import Path

import pytest
from flask import url_for
from sqlalchemy import func, select
from werkzeug.routing import IntegerConverter

from portal.cases.lifecycle import Status
from portal.config import ROOT
from portal.extensions import db
from tests import factories

# Public by design: static files, the login form, a lab's acknowledgement link, a lab's signed
# scan-file download and a person's set-password link (their tokens are the credential) and the
# signed lab API (HMAC, no session, no CSRF).
PUBLIC = ("/static/", "/login", "/lab/", "/scan-files/", "/set-password/", "/api/")
CSRF_EXEMPT = ("/api/",)  # authenticated by a signature over the body instead (docs/reliability.md W1)


def _rules(app, method: str, public: bool | None = None):
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if method not in rule.methods:
            continue
        is_public = rule.rule.startswith(PUBLIC)
        if public is None or is_public == public:
            yield rule


def _url(rule, ids: dict | None = None) -> str:
    ids = ids or {}
    values = {}
    for name in rule.arguments:
        if isinstance(rule._converters[name], IntegerConverter):
            values[name] = ids.get(name, 987654)
        else:
            values[name] = ids.get(name, "not-a-real-token-0123456789")
    return url_for(rule.endpoint, **values)


def _row_counts() -> dict[str, int]:
    return {t.name: db.session.scalar(select(func.count()).select_from(t)) for t in db.metadata.sorted_tables}


@pytest.fixture()
def request_ctx(app):
    with app.test_request_context():
        yield


# -- docs/reliability.md F1 / login everywhere ---------------------------------------------------------------------

def test_the_route_walk_finds_the_routes(app):
    gets = {r.endpoint for r in _rules(app, "GET", public=False)}
    posts = {r.endpoint for r in _rules(app, "POST", public=False)}
    assert {"board.index", "cases.show", "audit.index", "audit.export"} <= gets
    assert {"cases.move", "auth.logout", "admin.add_closure"} <= posts
    assert "auth.login" not in gets and "static" not in gets


def test_every_private_route_sends_an_anonymous_user_to_login(app, client, db, request_ctx):
    checked = []
    for rule in _rules(app, "GET", public=False):
        url = _url(rule)
        response = client.get(url)
        assert response.status_code == 302, f"GET {url} ({rule.endpoint}) answered {response.status_code}"
        assert response.headers["Location"].startswith("/login"), (url, response.headers["Location"])
        hx = client.hx(url)
        assert hx.status_code == 401, f"htmx GET {url} answered {hx.status_code}"
        assert hx.headers["HX-Redirect"].startswith("/login")
        checked.append(url)
    before = _row_counts()
    for rule in _rules(app, "POST", public=False):
        url = _url(rule)
        response = client.post(url, {})
        assert response.status_code == 302, f"POST {url} ({rule.endpoint}) answered {response.status_code}"
        assert response.headers["Location"].startswith("/login")
        assert client.post(url, {}, htmx=True).status_code == 401
        checked.append(url)
    assert _row_counts() == before
    assert len(checked) > 20


def _world_ids(world) -> dict:
    """Real ids for the url parameters, so logged-in GETs reach the view and not just a 404."""
    from portal.people.models import Appointment

    case = factories.case(world, Status.RECEIVED, seat=dt.date.today() + dt.timedelta(days=20))
    appt = db.session.get(Appointment, case.seat_appointment_id)
    db.session.commit()
    return {"case_id": case.id, "patient_id": case.patient_id, "provider_id": case.provider_id,
            "appointment_id": appt.id, "lab_id": case.lab_id, "status": "sent"}


def test_no_get_changes_anything(app, client, login, world, request_ctx):
    ids = _world_ids(world)
    login("admin")
    before = _row_counts()
    seen = {}
    for rule in _rules(app, "GET"):
        if rule.endpoint == "static":
            continue
        url = _url(rule, ids)
        seen[url] = client.get(url).status_code
        client.hx(url)
    assert _row_counts() == before, "a GET wrote to the database"
    assert all(code < 500 for code in seen.values()), {u: c for u, c in seen.items() if c >= 500}


# -- docs/reliability.md F1 / CSRF --------------------------------------------------------------------------------------

def test_every_post_without_csrf_is_400_and_writes_nothing(app, client, login, world, request_ctx):
    ids = _world_ids(world)
    login("admin")
    before = _row_counts()
    posts = [r for r in _rules(app, "POST") if not r.rule.startswith(CSRF_EXEMPT)]
    assert len(posts) > 10
    for rule in posts:
        url = _url(rule, ids)
        form = {"status": "cancelled", "reason": "csrf probe", "practice_id": world.practice.id,
                "day": "2031-01-01", "email": "x@test.test", "password": "x", "body": "hi"}
        response = client.post(url, form, csrf=False)
        assert response.status_code == 400, f"POST {url} ({rule.endpoint}) without CSRF: {response.status_code}"
        hx = client.post(url, form, csrf=False, htmx=True)
        assert hx.status_code == 400
        assert hx.headers.get("HX-Retarget") == "#toasts" or rule.rule.startswith(PUBLIC)
        wrong = client.post(url, form, csrf=False, headers={"X-CSRFToken": "forged"})
        assert wrong.status_code == 400
    assert _row_counts() == before
    assert client.get("/").status_code == 200  # and the user is still signed in


def test_the_same_post_with_the_token_goes_through(client, login, world):
    """The control for the test above: a CSRF token is what made the difference."""
    case = factories.case(world, Status.SENT)
    login("coordinator")
    response = client.post(f"/cases/{case.id}/move", {"status": "acknowledged"})
    assert response.status_code in (200, 204, 302, 303)
    db.session.refresh(case)
    assert case.status is Status.ACKNOWLEDGED


def test_the_csrf_error_page_says_what_to_do(client, login):
    login()
    response = client.post("/logout", csrf=False)
    assert response.status_code == 400
    assert "Reload the page and try again." in response.get_data(as_text=True)


# -- docs/reliability.md F2 session cookie ------------------------------------------------------------------------------

def _session_cookie(response) -> str:
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert cookies, response.headers
    return cookies[-1]


def test_session_cookie_is_httponly_and_samesite_lax(client, world):
    response = client.post("/login", {"email": world.users["coordinator"].email, "password": factories.PASSWORD})
    cookie = _session_cookie(response)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # the test app runs over http with SESSION_COOKIE_SECURE off


def test_session_cookie_is_secure_when_configured(app, client, world, monkeypatch):
    monkeypatch.setitem(app.config, "SESSION_COOKIE_SECURE", True)
    response = client.post("/login", {"email": world.users["coordinator"].email, "password": factories.PASSWORD})
    cookie = _session_cookie(response)
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_production_config_defaults_are_secure(monkeypatch):
    from portal.config import Config

    monkeypatch.setenv("LM_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "x" * 32)
    monkeypatch.delenv("SESSION_COOKIE_SECURE", raising=False)
    config = Config()
    assert config.DEVELOPMENT is False
    assert config.SESSION_COOKIE_SECURE and config.SESSION_COOKIE_HTTPONLY
    assert config.SESSION_COOKIE_SAMESITE == "Lax"
    assert config.REMEMBER_COOKIE_SECURE and config.REMEMBER_COOKIE_HTTPONLY
    monkeypatch.delenv("SECRET_KEY")
    with pytest.raises(RuntimeError, match="SECRET_KEY must be set"):
        Config()


# -- docs/reliability.md F3 headers -------------------------------------------------------------------------------------

def _responses(client, login, world):
    """A spread of responses: page, partial, redirect, 404, 403, 405, static file, error from htmx."""
    case = factories.case(world, Status.SENT)
    yield "login page", client.get("/login")
    yield "redirect", client.get("/")
    login("coordinator")
    yield "board", client.get("/")
    yield "partial", client.hx("/", target="board-columns")
    yield "case", client.get(f"/cases/{case.id}")
    yield "404", client.get("/cases/987654")
    yield "403", client.get("/audit/")
    yield "405", client.get("/logout")
    yield "htmx 404", client.hx("/cases/987654")
    yield "static", client.get("/static/app.css")


def test_security_headers_on_every_kind_of_response(client, login, world):
    for name, response in _responses(client, login, world):
        csp = response.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors" in csp, name
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if " " in d.strip())
        assert "'unsafe-inline'" not in directives.get("script-src", "") and "'unsafe-eval'" not in csp, name
        assert response.headers.get("X-Content-Type-Options") == "nosniff", name
        assert response.headers.get("Referrer-Policy") in (
            "no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"), name
        assert "Strict-Transport-Security" not in response.headers, f"{name}: HSTS in development"
        response.close()  # the static file's handle


def test_hsts_outside_development(app, client, login, world, monkeypatch):
    monkeypatch.setitem(app.config, "DEVELOPMENT", False)
    for name, response in _responses(client, login, world):
        hsts = response.headers.get("Strict-Transport-Security", "")
        max_age = re.search(r"max-age=(\d+)", hsts)
        assert max_age and int(max_age.group(1)) >= 31536000, f"{name}: {hsts!r}"
        response.close()


def test_pages_are_not_cached_by_shared_caches(client, login, world):
    login()
    response = client.get("/")
    assert "private" in response.headers["Cache-Control"] or "no-store" in response.headers["Cache-Control"]


def test_templates_have_no_inline_scripts_styles_or_handlers():
    """CSP forbids them, so they would silently do nothing. (Mail templates are for mail clients.)"""
    problems = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        if path.relative_to(ROOT / "templates").parts[0] == "mail":
            continue
        text = path.read_text()
        for pattern in (r"<script(?![^>]*\bsrc=)[^>]*>", r"\sstyle\s*=", r"\son[a-z]+\s*=\s*[\"']",
                        r"javascript:"):
            problems += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert problems == []


# -- docs/reliability.md F4 htmx configuration -------------------------------------------------------------------------

def _htmx_config(page_html: str) -> dict:
    match = re.search(r'<meta name="htmx-config" content=\'([^\']*)\'', page_html) or re.search(
        r'<meta name="htmx-config" content="([^"]*)"', page_html)
    assert match, "no htmx-config meta"
    return json.loads(html.unescape(match.group(1)))


@pytest.mark.parametrize("signed_in", [False, True])
def test_htmx_config_meta(client, login, world, signed_in):
    if signed_in:
        login()
    page = client.get("/" if signed_in else "/login").get_data(as_text=True)
    config = _htmx_config(page)
    assert config["selfRequestsOnly"] is True
    assert config["allowEval"] is False
    assert config["historyCacheSize"] == 0
    assert config.get("allowScriptTags") is False


def test_htmx_is_the_pinned_vendored_copy_served_from_self(client, db):
    page = client.get("/login").get_data(as_text=True)
    sources = re.findall(r'<script[^>]*src="([^"]+)"', page)
    assert sources and all(s.startswith("/static/") for s in sources), sources
    vendored = [s for s in sources if "htmx" in s]
    assert vendored, sources
    path = Path(ROOT) / vendored[0].split("?")[0].lstrip("/")
    assert "2.0.11" in path.read_text()[:2000] or "2.0.11" in path.name or "version:\"2.0.11\"" in path.read_text()
