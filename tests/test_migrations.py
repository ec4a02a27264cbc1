"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL;
the append-only triggers on audit_event refuse UPDATE and DELETE (docs/reliability.md A3); downgrade to base works.

The rest of the suite uses create_all, so this file is the only check that `flask db upgrade`
(what production runs) gives the same schema. When it fails after a model change, the message
lists every difference: regenerate the migration with `flask db migrate`."""
from __future__ import annotations

import contextlib
import json
import datetime as dt
import logging
import os
import secrets
from urllib.parse import urlsplit, urlunsplit

import flask_migrate
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from portal import create_app
from portal.audit.actor import Actor
from portal.extensions import db

APPEND_ONLY = "audit rows are append-only"
@contextlib.contextmanager
def _logging_kept():
    """migrations/env.py runs logging.config.fileConfig, which disables every logger that exists
    and swaps the root handlers. Put it all back so later tests (and caplog) still work."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loggers = {name: (lg.disabled, lg.level, lg.handlers[:], lg.propagate)
               for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lg in logging.root.manager.loggerDict.items():
            if not isinstance(lg, logging.Logger):
                continue
            if name in loggers:
                lg.disabled, lg.level, lg.handlers[:], lg.propagate = loggers[name]
            else:
                lg.disabled, lg.handlers[:] = False, []


def _app(url: str):
    return create_app({
        "TESTING": True, "SECRET_KEY": "migrations-test", "SQLALCHEMY_DATABASE_URI": url,
        "RATELIMIT_STORAGE_URI": "memory://", "REDIS_URL": "", "MAIL_BACKEND": "devmailbox",
    })


def _describe(diff) -> str:
    """One readable line for one entry of alembic's compare_metadata output."""
    if isinstance(diff, list):  # modify_* entries come grouped per column
        return "; ".join(_describe(d) for d in diff)
    op, *rest = diff
    if op in ("add_table", "remove_table"):
        where = "models only (missing from the migrations)" if op == "add_table" else "migrations only"
        return f"table {rest[0].name}: {where}"
    if op in ("add_column", "remove_column"):
        _, table, column = rest
        where = "models only" if op == "add_column" else "migrations only"
        return f"column {table}.{column.name} {column.type}: {where}"
    if op in ("add_index", "remove_index", "add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        obj = rest[0]
        cols = ", ".join(c.name for c in getattr(obj, "columns", []))
        where = "models only" if op.startswith("add") else "migrations only"
        return f"{op.split('_', 1)[1]} {obj.name} on {obj.table.name}({cols}): {where}"
    if op.startswith("modify_"):
        _, table, column, _, existing, new = rest
        return f"{table}.{column} {op[7:]}: migrations have {existing!r}, models have {new!r}"
    return repr(diff)


def _schema_diff(engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "render_as_batch": True})
        return compare_metadata(context, db.metadata)


def _check_database(url: str) -> None:
    app = _app(url)
    with app.app_context(), _logging_kept():
        try:
            flask_migrate.upgrade()
            diff = _schema_diff(db.engine)
            # The triggers and the downgrade are checked even when the schema differs.
            _check_audit_is_append_only()
            flask_migrate.downgrade(revision="base")
            left = set(sa.inspect(db.engine).get_table_names()) - {"alembic_version"}
            assert left == set(), f"downgrade to base left tables behind: {sorted(left)}"
            flask_migrate.upgrade()  # and the round trip works
            assert _schema_diff(db.engine) == diff
        finally:
            db.session.remove()
            db.engine.dispose()
    if diff:
        pytest.fail(
            f"{urlsplit(url).scheme.split('+')[0]}: the migrations and the models differ "
            "(regenerate with `flask db migrate`):\n  - " + "\n  - ".join(_describe(d) for d in diff),
            pytrace=False,
        )


def _check_audit_is_append_only() -> None:
    from portal.audit.record import record, verify_chain

    record("test.migrated", "probe", 1, after={"ok": True}, actor=Actor.system("test"))
    record("test.migrated", "probe", 2, after={"ok": True}, actor=Actor.system("test"))
    db.session.commit()  # the head row the migration inserted made this possible
    assert list(verify_chain()) == []
    for statement in ("UPDATE audit_event SET outcome = 'forged' WHERE seq = 1",
                      "UPDATE audit_event SET after = '{}'",
                      "DELETE FROM audit_event WHERE seq = 2",
                      "DELETE FROM audit_event"):
        with pytest.raises(sa.exc.DBAPIError) as refused:
            db.session.execute(sa.text(statement))
        assert APPEND_ONLY in str(refused.value), statement
        db.session.rollback()
    rows = db.session.execute(sa.text("SELECT seq, outcome FROM audit_event ORDER BY seq")).all()
    assert [tuple(r) for r in rows] == [(1, "ok"), (2, "ok")]
    assert list(verify_chain()) == []
    db.session.remove()


def test_upgrade_on_a_fresh_sqlite_file_matches_the_models(tmp_path):
    _check_database(f"sqlite:///{tmp_path / 'migrated.sqlite3'}")


def _postgres_server_url() -> str | None:
    """The server to create a scratch database on: TEST_DATABASE_URL's, else a local one."""
    url = os.environ.get("TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    if not url.startswith("postgres"):
        return None
    parts = urlsplit(url.replace("postgresql+psycopg://", "postgresql://", 1).replace("postgres://", "postgresql://", 1))
    admin = urlunsplit(parts._replace(scheme="postgresql+psycopg", path="/postgres"))
    try:
        engine = sa.create_engine(admin, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
    except sa.exc.OperationalError:
        if os.environ.get("TEST_DATABASE_URL"):
            raise
        return None
    return admin


@contextlib.contextmanager
def _scratch_postgresql():
    """The URL of a new, empty PostgreSQL database, dropped afterwards (skips without a server)."""
    admin = _postgres_server_url()
    if admin is None:
        pytest.skip("no PostgreSQL: set TEST_DATABASE_URL or run one on 127.0.0.1:5432")
    name = f"lm_migrations_{secrets.token_hex(4)}"
    server = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    finally:
        with server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def test_upgrade_on_a_fresh_postgresql_database_matches_the_models():
    with _scratch_postgresql() as url:
        _check_database(url)


def test_the_reports_index_carries_the_case_id_on_postgresql():
    """Alembic does not compare INCLUDE columns: the reports' index-only scan needs the id there
    (migration 0017), as create_all makes it from the model."""
    with _scratch_postgresql() as url, _at_revision(url, "head"):
        found = db.session.scalar(sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_lab_case_report'"))
        assert found.endswith("INCLUDE (id)"), found


def _insert(conn, table: str, **values) -> int:
    """A row with `values`, and a plain value in every other NOT NULL column (the models'
    defaults are Python-side, so the tables have none of their own)."""
    columns = sa.Table(table, sa.MetaData(), autoload_with=conn).columns
    for column in columns:
        if column.name in values or column.nullable or column.primary_key:
            continue
        python_type = column.type.python_type
        values[column.name] = {str: "", int: 0, bool: False}.get(
            python_type, sa.func.now() if python_type in (dt.datetime, dt.date) else "")
    return conn.execute(sa.table(table, *[sa.column(k) for k in values]).insert().values(**values)
                        .returning(sa.column("id"))).scalar_one()


def test_business_days_are_backfilled_with_the_practices_closed_days(tmp_path):
    """Migration 0007 fills the stored spans of the cases already there, by the lifecycle's rule:
    sent Mon 3 Mar 2031, dispatched Fri 7, received Mon 10, Wed 5 closed: 3 and 4 business days."""
    with _at_revision(f"sqlite:///{tmp_path / 'backfill.sqlite3'}", "0006"):
        with db.engine.begin() as conn:
            practice, patient = _practice(conn, closed=dt.date(2031, 3, 5))
            stamps = [(dt.datetime(2031, 3, 3, 9), dt.datetime(2031, 3, 7, 15), dt.datetime(2031, 3, 10, 11)),
                      (dt.datetime(2031, 3, 3, 9), None, None), (None, None, None)]
            ids = [_insert(conn, "lab_case", number=f"LC-{n}", practice_id=practice, patient_id=patient,
                           status="SENT", sent_at=sent, dispatched_at=dispatched, received_at=received)
                   for n, (sent, dispatched, received) in enumerate(stamps)]
        flask_migrate.upgrade()
        with db.engine.connect() as conn:
            found = conn.execute(sa.text(
                "SELECT id, sent_to_dispatched_bdays, sent_to_received_bdays FROM lab_case ORDER BY id")).all()
        assert [tuple(r) for r in found] == [(ids[0], 3, 4), (ids[1], None, None), (ids[2], None, None)]


@contextlib.contextmanager
def _at_revision(url: str, revision: str):
    """An app on a database migrated up to `revision`; the test upgrades the rest of the way."""
    app = _app(url)
    with app.app_context(), _logging_kept():
        try:
            flask_migrate.upgrade(revision=revision)
            yield
        finally:
            db.session.remove()
            db.engine.dispose()


def _practice(conn, closed: dt.date | None = None) -> tuple[int, int]:
    """(practice id, patient id): a practice of a new organisation, with a patient (and a closed day)."""
    org = _insert(conn, "organization", name="DSO")
    practice = _insert(conn, "practice", organization_id=org, name="P")
    if closed:
        _insert(conn, "practice_closure", practice_id=practice, day=closed)
    return practice, _insert(conn, "patient", practice_id=practice, first_name="A", last_name="B")


def _restorations_backfilled(url: str) -> None:
    with _at_revision(url, "0015"):
        with db.engine.begin() as conn:
            practice, patient = _practice(conn)
            ids = [_insert(conn, "lab_case", number=f"LC-{n}", practice_id=practice, patient_id=patient,
                           status="SENT") for n in range(3)]
            for position, restoration in enumerate(["night_guard", "crown", "night_guard"]):
                _insert(conn, "case_item", case_id=ids[0], position=position, restoration=restoration)
            _insert(conn, "case_item", case_id=ids[1], position=0, restoration="bridge")
        flask_migrate.upgrade()
        with db.engine.connect() as conn:
            found = conn.execute(sa.text("SELECT id, restorations FROM lab_case ORDER BY id")).all()
        assert [(r[0], json.loads(r[1])) for r in found] == [
            (ids[0], ["crown", "night_guard"]), (ids[1], ["bridge"]), (ids[2], [])]


def test_a_cases_restorations_are_backfilled_from_its_items(tmp_path):
    """Migration 0016 stores each case's distinct restoration codes, sorted (portal/cases/models.py)."""
    _restorations_backfilled(f"sqlite:///{tmp_path / 'restorations.sqlite3'}")


def test_a_cases_restorations_are_backfilled_on_postgresql():
    with _scratch_postgresql() as url:
        _restorations_backfilled(url)
