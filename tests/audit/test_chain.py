"""A3: the hash chain, `flask audit verify`, and concurrent writers.

Tests build the schema with create_all, so there are no append-only triggers here and a row can
be tampered with directly in SQL, the way an attacker with database access would. The triggers
themselves are tested in tests/test_migrations.py."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select, text

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent, AuditHead
from portal.audit.service import GENESIS, record, row_hash, verify_chain
from portal.cases.lifecycle import Status
from tests import factories


def _write(db, n: int, practice_id: int | None = None) -> None:
    for i in range(n):
        record("test.write", "probe", i, before={"n": i}, after={"n": i + 1}, actor=Actor.system("test"),
               practice_id=practice_id)
    db.session.commit()


def _verify(app):
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    return result.exit_code, result.output


def test_rows_link_to_the_one_before(db):
    _write(db, 3)
    rows = db.session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == GENESIS
    assert rows[1].prev_hash == rows[0].hash and rows[2].prev_hash == rows[1].hash
    assert all(row_hash(r) == r.hash for r in rows)
    head = db.session.get(AuditHead, 1)
    assert (head.seq, head.hash) == (3, rows[2].hash)


def test_verify_passes_on_an_intact_chain(app, db, world):
    factories.case(world, Status.FITTED)
    _write(db, 5)
    code, output = _verify(app)
    assert code == 0, output
    rows = db.session.scalar(select(func.count()).select_from(AuditEvent))
    assert f"Audit chain intact: {rows} rows verified." in output


def test_verify_passes_on_an_empty_chain(app, db):
    code, output = _verify(app)
    assert code == 0 and "0 rows verified" in output


def test_verify_walks_the_chain_in_batches(db):
    _write(db, 7)
    assert list(verify_chain(batch=2)) == []
    db.session.execute(text("UPDATE audit_event SET actor_label = 'someone else' WHERE seq = 5"))
    db.session.commit()
    assert [p.seq for p in verify_chain(batch=2)] == [5]


@pytest.mark.parametrize("column, value", [
    ("after", '{"n":999}'),
    ("before", "{}"),
    ("actor_id", "42"),
    ("outcome", "denied"),
    ("occurred_at", "2020-01-01 00:00:00"),
])
def test_a_tampered_row_fails_verify_and_is_named(app, db, column, value):
    _write(db, 4)
    db.session.execute(text(f"UPDATE audit_event SET {column} = :v WHERE seq = 2"), {"v": value})
    db.session.commit()
    code, output = _verify(app)
    assert code == 1
    assert "BROKEN at row 2: row 2 was altered (its hash no longer matches)" in output
    assert "row 3" not in output  # the next row still follows the stored hash of row 2


def test_a_row_rehashed_after_tampering_breaks_the_link_to_the_next(app, db):
    _write(db, 4)
    db.session.execute(text("UPDATE audit_event SET after = :v WHERE seq = 2"), {"v": '{"n":999}'})
    db.session.commit()
    row = db.session.scalar(select(AuditEvent).where(AuditEvent.seq == 2))
    db.session.refresh(row)
    db.session.execute(text("UPDATE audit_event SET hash = :h WHERE seq = 2"), {"h": row_hash(row)})
    db.session.commit()
    code, output = _verify(app)
    assert code == 1
    assert "BROKEN at row 3: row 3 does not follow the row before it" in output


def test_deleting_the_last_row_is_detected(app, db):
    _write(db, 4)
    db.session.execute(text("DELETE FROM audit_event WHERE seq = 4"))
    db.session.commit()
    code, output = _verify(app)
    assert code == 1
    assert "BROKEN at row 3: the chain ends at row 3 but 4 rows were written" in output


def test_deleting_a_middle_row_is_detected(app, db):
    _write(db, 4)
    db.session.execute(text("DELETE FROM audit_event WHERE seq = 2"))
    db.session.commit()
    code, output = _verify(app)
    assert code == 1
    assert "BROKEN at row 3: row 2 is missing (next row is 3)" in output
    assert "BROKEN at row 3: row 3 does not follow the row before it" in output


def test_deleting_everything_is_detected(app, db):
    _write(db, 2)
    db.session.execute(text("DELETE FROM audit_event"))
    db.session.commit()
    code, output = _verify(app)
    assert code == 1 and "2 rows were written" in output


def test_verify_lists_at_most_fifty_problems(app, db):
    _write(db, 60)
    db.session.execute(text("UPDATE audit_event SET ip = '10.0.0.1'"))
    db.session.commit()
    code, output = _verify(app)
    assert code == 1
    assert output.count("BROKEN at row") == 50 and "... and 10 more" in output


def test_record_joins_the_callers_transaction(db):
    """A2: a rolled-back change leaves no audit row and no gap in the chain."""
    _write(db, 1)
    record("test.rolled_back", "probe", 1, actor=Actor.system("test"))
    db.session.rollback()
    _write(db, 1)
    assert db.session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)).all() == [1, 2]
    assert list(verify_chain()) == []


def test_concurrent_writers_never_fork_the_chain(app, db, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite allows one writer at a time, so two writers can't race; set TEST_DATABASE_URL "
                    "to a PostgreSQL database to run this")
    from portal.extensions import db as _db

    writers, per_writer = 4, 15
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with app.app_context():
                start.wait(timeout=10)
                for i in range(per_writer):
                    record("test.concurrent", "probe", f"{n}-{i}", after={"writer": n, "i": i},
                           actor=Actor.system(f"writer {n}"))
                    time.sleep(0.002)  # hold the head lock a moment so the others queue behind it
                    record("test.concurrent", "probe", f"{n}-{i}b", actor=Actor.system(f"writer {n}"))
                    _db.session.commit()
        except BaseException as exc:  # noqa: BLE001  (reported to the test thread below)
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []

    db.session.expire_all()
    seqs = db.session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)).all()
    assert seqs == list(range(1, writers * per_writer * 2 + 1))
    assert list(verify_chain()) == []
    code, output = _verify(app)
    assert code == 0, output
