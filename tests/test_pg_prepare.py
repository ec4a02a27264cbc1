"""PostgreSQL: no server-side prepared statements (portal/__init__.py says why: a generic plan kept
from nearly empty tables slowed a PMS first sync as its tables grew; bench/pms.py measures it)."""
from __future__ import annotations

import pytest

from portal.extensions import db


def test_postgresql_connections_do_not_prepare_statements(app):
    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("PostgreSQL only (TEST_DATABASE_URL)")
        with db.engine.connect() as conn:
            assert conn.connection.driver_connection.prepare_threshold is None
