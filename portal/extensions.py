"""Every Flask extension lives here, created unbound and wired in create_app with init_app; and
`transaction`, the one way a view commits what it changed."""
from collections.abc import Iterator
from contextlib import contextmanager

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from htmx_flask import Htmx
import sqlite3

from sqlalchemy import Engine, MetaData, event
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


db = SQLAlchemy(model_class=Base)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    """SQLite (the embedded default): write-ahead logging, so the web server and the worker read
    while the other writes, and commits that don't each wait for a full fsync."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address, default_limits=[])
htmx = Htmx()


class Outcome:
    """What `transaction` ended with: ``refused`` is the refusal it caught, or None once committed."""

    refused: Exception | None = None


@contextmanager
def transaction(*refusals: type[Exception]) -> Iterator[Outcome]:
    """The block is one unit of work: committed when it ends, rolled back if it raises.

    A refusal (one of `refusals`: UserError, IllegalMove, a feature's own error) is caught after
    the rollback and kept on the outcome for the view to show; anything else rolls back and
    propagates. So a view reads::

        with transaction(UserError) as outcome:
            services.change(...)
        if outcome.refused:
            return page_with(str(outcome.refused))
    """
    outcome = Outcome()
    try:
        yield outcome
    except refusals as exc:
        db.session.rollback()
        outcome.refused = exc
        return
    except BaseException:
        db.session.rollback()
        raise
    db.session.commit()
