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
from portal.audit.record import GENESIS, record, row_hash, verify_chain
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


# ---- the keyed chain -------------------------------------------------------------------------------


def _plain_sha256(row: dict) -> str:
    """The chain's hash as it was before it was keyed: SHA-256 over the fields, no key."""
    import datetime as dt
    import hashlib
    import json

    fields = ("seq", "occurred_at", "practice_id", "actor_type", "actor_id", "actor_label", "on_behalf_of",
              "action", "entity_type", "entity_id", "before", "after", "source", "ip", "outcome",
              "correlation_id", "prev_hash")
    payload = {}
    for name in fields:
        value = row[name]
        if isinstance(value, str) and name == "occurred_at":
            value = dt.datetime.fromisoformat(value)
        payload[name] = value.isoformat(timespec="microseconds") if isinstance(value, dt.datetime) else value
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _rewrite_from(db, seq: int, after: str, *, blank_key_id: bool = False, first: int | None = None) -> None:
    """What an attacker with write access to the database does: rewrite row `seq` and recompute
    every later hash (and the head) the way the chain was hashed before it was keyed."""
    rows = [dict(r._mapping) for r in db.session.execute(
        select(*AuditEvent.__table__.c).order_by(AuditEvent.seq))]
    prev = rows[seq - 2]["hash"] if seq > 1 else GENESIS
    for row in rows[(first or seq) - 1:]:
        if row["seq"] == seq:
            row["after"] = after
        row["prev_hash"] = prev
        row["hash"] = _plain_sha256(row)
        db.session.execute(
            text("UPDATE audit_event SET after = :after, prev_hash = :prev, hash = :hash"
                 + (", key_id = ''" if blank_key_id else "") + " WHERE seq = :seq"),
            {"after": row["after"], "prev": row["prev_hash"], "hash": row["hash"], "seq": row["seq"]})
        prev = row["hash"]
    db.session.execute(text("UPDATE audit_head SET hash = :h WHERE id = 1"), {"h": prev})
    db.session.commit()


def test_a_row_rewritten_with_every_later_hash_recomputed_is_caught(app, db):
    _write(db, 5)
    _rewrite_from(db, 2, '{"n":999}')
    code, output = _verify(app)
    assert code == 1, output
    assert "BROKEN at row 2: row 2 was altered (its hash no longer matches)" in output
    assert "BROKEN at row 5: row 5 was altered" in output


def test_a_chain_rewritten_whole_as_plain_rows_is_caught(app, db):
    """Blanking the key ids too, so every row looks like it predates the keyed chain."""
    _write(db, 4)
    _rewrite_from(db, 2, '{"n":999}', blank_key_id=True, first=1)
    code, output = _verify(app)
    assert code == 1, output
    assert ("BROKEN at row 1: row 1 has a plain SHA-256 hash, not the keyed one: only the first 0 rows "
            "(AUDIT_LEGACY_ROWS) predate the keyed chain") in output


def test_rows_carry_the_id_of_the_key_that_signed_them(app, db):
    from portal.audit.keys import key_id

    _write(db, 2)
    first_key = app.config["AUDIT_CHAIN_KEYS"].split(",")[0]
    ids = db.session.scalars(select(AuditEvent.key_id)).all()
    assert ids == [key_id(first_key)] * 2
    assert first_key not in " ".join(str(v) for r in db.session.execute(select(*AuditEvent.__table__.c))
                                     for v in r)


def test_a_rotated_key_ring_verifies_old_and_new_rows(app, db, monkeypatch):
    old = app.config["AUDIT_CHAIN_KEYS"]
    _write(db, 2)
    new = "a-brand-new-audit-key-for-the-rotation-0123456789"
    monkeypatch.setitem(app.config, "AUDIT_CHAIN_KEYS", f"{new},{old}")
    _write(db, 2)
    ids = db.session.scalars(select(AuditEvent.key_id).order_by(AuditEvent.seq)).all()
    assert ids[0] == ids[1] != ids[2] == ids[3]
    code, output = _verify(app)
    assert code == 0, output

    monkeypatch.setitem(app.config, "AUDIT_CHAIN_KEYS", new)  # the old key dropped too early
    code, output = _verify(app)
    assert code == 1
    assert f"BROKEN at row 1: row 1 was signed with key {ids[0]}, which is not in AUDIT_CHAIN_KEYS" in output


def test_a_different_key_fails_every_row(app, db, monkeypatch):
    _write(db, 3)
    monkeypatch.setitem(app.config, "AUDIT_CHAIN_KEYS", "someone-elses-key-someone-elses-key-0000")
    code, output = _verify(app)
    assert code == 1 and output.count("which is not in AUDIT_CHAIN_KEYS") == 3


def test_rows_from_before_the_keyed_chain_verify_as_a_prefix(app, db, monkeypatch):
    """A database upgraded by migration 0006: its old rows keep their plain SHA-256 hashes and
    an empty key_id; with AUDIT_LEGACY_ROWS set they verify, and the first keyed row anchors them."""
    _write(db, 3)
    _rewrite_from(db, 1, '{"n":1}', blank_key_id=True)  # as they were written before: plain SHA-256
    _write(db, 2)  # the keyed rows after the upgrade
    assert _verify(app)[0] == 1  # AUDIT_LEGACY_ROWS unset: plain rows are not accepted
    monkeypatch.setitem(app.config, "AUDIT_LEGACY_ROWS", 3)
    code, output = _verify(app)
    assert code == 0, output
    assert "3 of them predate the keyed chain" in output

    # Rewriting an old row and re-hashing the old rows after it, up to the first keyed row, which
    # is then made to point at the new hash: its HMAC no longer matches, and nobody can redo it.
    _rewrite_from(db, 2, '{"n":999}', blank_key_id=True)
    four = db.session.execute(select(*AuditEvent.__table__.c).where(AuditEvent.seq == 4)).one()
    assert four.key_id == ""  # _rewrite_from re-hashed the keyed rows the old way too: caught
    code, output = _verify(app)
    assert code == 1 and "BROKEN at row 4: row 4 has a plain SHA-256 hash" in output


def test_an_old_row_rewritten_under_a_keyed_row_is_caught(app, db, monkeypatch):
    monkeypatch.setitem(app.config, "AUDIT_LEGACY_ROWS", 3)
    _write(db, 3)
    _rewrite_from(db, 1, '{"n":1}', blank_key_id=True)  # rows from before the keyed chain
    _write(db, 1)
    assert _verify(app)[0] == 0
    rows = [dict(r._mapping) for r in db.session.execute(select(*AuditEvent.__table__.c).order_by(AuditEvent.seq))]
    rows[1]["after"] = '{"n":999}'
    for row in rows[1:3]:
        row["prev_hash"] = rows[row["seq"] - 2]["hash"]
        row["hash"] = _plain_sha256(row)
    for row in rows[1:3]:
        db.session.execute(text("UPDATE audit_event SET after = :a, prev_hash = :p, hash = :h WHERE seq = :s"),
                           {"a": row["after"], "p": row["prev_hash"], "h": row["hash"], "s": row["seq"]})
    db.session.execute(text("UPDATE audit_event SET prev_hash = :p WHERE seq = 4"), {"p": rows[2]["hash"]})
    db.session.commit()
    code, output = _verify(app)
    assert code == 1, output
    assert "BROKEN at row 4: row 4 was altered (its hash no longer matches)" in output
    assert "row 2" not in output and "row 3" not in output  # the plain rows alone look fine


def test_the_exported_head_catches_a_truncated_chain(app, db):
    _write(db, 5)
    runner = app.test_cli_runner()
    exported = runner.invoke(args=["audit", "head"])
    assert exported.exit_code == 0
    line = exported.output.strip()
    last = db.session.scalar(select(AuditEvent).where(AuditEvent.seq == 5))
    assert line == f"5:{last.hash}"

    ok = runner.invoke(args=["audit", "verify", "--head", line])
    assert ok.exit_code == 0 and "reaches the exported head (row 5) unchanged" in ok.output
    _write(db, 2)  # the chain grows: the old head is still on it
    assert runner.invoke(args=["audit", "verify", "--head", line]).exit_code == 0

    # Drop the last three rows and set the head row back: the chain alone looks whole.
    db.session.execute(text("DELETE FROM audit_event WHERE seq > 4"))
    four = db.session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == 4))
    db.session.execute(text("UPDATE audit_head SET seq = 4, hash = :h WHERE id = 1"), {"h": four})
    db.session.commit()
    assert _verify(app)[0] == 0
    broken = runner.invoke(args=["audit", "verify", "--head", line])
    assert broken.exit_code == 1
    assert "BROKEN at row 4: the chain ends at row 4 but the exported head has 5 rows" in broken.output


def test_the_exported_head_from_a_file_and_a_rewritten_head_row(app, db, tmp_path):
    _write(db, 3)
    runner = app.test_cli_runner()
    path = tmp_path / "audit-head.txt"
    path.write_text(runner.invoke(args=["audit", "head"]).output)
    assert runner.invoke(args=["audit", "verify", "--head-file", str(path)]).exit_code == 0
    db.session.execute(text("UPDATE audit_event SET hash = :h WHERE seq = 3"), {"h": "f" * 64})
    db.session.execute(text("UPDATE audit_head SET hash = :h WHERE id = 1"), {"h": "f" * 64})
    db.session.commit()
    broken = runner.invoke(args=["audit", "verify", "--head-file", str(path)])
    assert broken.exit_code == 1 and "row 3 does not match the exported head" in broken.output


def test_a_malformed_exported_head_is_a_clear_error(app, db):
    result = app.test_cli_runner().invoke(args=["audit", "verify", "--head", "twelve:abc"])
    assert result.exit_code == 2 and "1234:<64 hex digits>" in result.output


def test_production_requires_the_audit_key(monkeypatch):
    from portal.config import Config

    monkeypatch.setenv("LM_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "x" * 32)
    monkeypatch.setenv("AUDIT_CHAIN_KEYS", "y" * 40)
    assert Config().AUDIT_CHAIN_KEYS == "y" * 40
    monkeypatch.delenv("AUDIT_CHAIN_KEYS")
    with pytest.raises(RuntimeError, match="AUDIT_CHAIN_KEYS must be set"):
        Config()


def test_development_generates_the_audit_key_into_instance(monkeypatch, tmp_path):
    from portal import config

    monkeypatch.setenv("LM_INSTANCE_DIR", str(tmp_path))
    monkeypatch.delenv("AUDIT_CHAIN_KEYS", raising=False)
    monkeypatch.setenv("LM_ENV", "development")
    monkeypatch.setattr(config, "INSTANCE", tmp_path)
    first = config.Config().AUDIT_CHAIN_KEYS
    assert (tmp_path / "audit_key").read_text().strip() == first and len(first) >= 32
    assert config.Config().AUDIT_CHAIN_KEYS == first  # kept across restarts
    assert oct((tmp_path / "audit_key").stat().st_mode & 0o777) == "0o600"


def test_a_short_key_is_refused(app, db, monkeypatch):
    monkeypatch.setitem(app.config, "AUDIT_CHAIN_KEYS", "short")
    with pytest.raises(RuntimeError, match="shorter than 32 characters"):
        record("test.write", "probe", 1, actor=Actor.system("test"))
    db.session.rollback()


def _head_statements(db, prefix="UPDATE AUDIT_HEAD"):
    from sqlalchemy import event

    seen = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith(prefix):
            seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    return seen, lambda: event.remove(db.engine, "before_cursor_execute", count)


def test_rows_written_under_a_held_head_are_the_rows_written_one_by_one(app, db):
    from portal.audit.record import held_head

    _write(db, 2)
    seen, stop = _head_statements(db)
    inserts, stop_inserts = _head_statements(db, "INSERT INTO AUDIT_EVENT")
    try:
        with held_head():
            for i in range(4):
                row = record("test.held", "probe", i, after={"n": i}, actor=Actor.system("test"))
                assert row not in db.session  # not written until the block ends
            assert not inserts
        db.session.commit()
    finally:
        stop()
        stop_inserts()
    assert len(inserts) == 1  # the four rows in one INSERT as the block ended (one by one: four)
    _write(db, 1)  # a row written one by one after the block follows its last row
    rows = db.session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert all(later.prev_hash == earlier.hash for earlier, later in zip(rows, rows[1:]))
    assert all(row_hash(r) == r.hash for r in rows)
    head = db.session.get(AuditHead, 1)
    assert (head.seq, head.hash) == (7, rows[-1].hash)
    assert len(seen) == 2  # taken once, put back once (one by one: two per row)
    assert _verify(app)[0] == 0


def test_a_held_head_block_that_raises_writes_nothing(app, db):
    from portal.audit.record import held_head

    _write(db, 1)
    with pytest.raises(ValueError):
        with held_head():
            record("test.held", "probe", 1, actor=Actor.system("test"))
            raise ValueError("bad order")
    db.session.rollback()
    _write(db, 1)
    assert [r.seq for r in db.session.scalars(select(AuditEvent).order_by(AuditEvent.seq))] == [1, 2]
    assert _verify(app)[0] == 0
