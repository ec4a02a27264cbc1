"""PostgreSQL connections prepare no statements server-side (portal/__init__.py): a generic plan
chosen while the tables were nearly empty kept sequential scans through a PMS first sync."""
from __future__ import annotations

import pytest

from portal.extensions import db


def test_postgresql_connections_prepare_no_statements(app, world):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only (TEST_DATABASE_URL)")
    raw = db.engine.raw_connection()
    try:
        assert raw.driver_connection.prepare_threshold is None
    finally:
        raw.close()
