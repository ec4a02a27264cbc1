"""The one helper that writes audit rows (docs/reliability.md A1-A3), and the chain check.

Each row's hash is an HMAC-SHA256 (portal/audit/keys.py) over its fields, the id of the key
that signed it and the previous row's hash. Rows written before the chain was keyed keep their
plain SHA-256 hash and an empty key_id. Verify accepts them only as the chain's first
`AUDIT_LEGACY_ROWS` rows (a setting, outside the database; 0 unless a database from before the
keyed chain was upgraded): the first keyed row's HMAC covers the last of them (its prev_hash), so
none can be rewritten, and rows re-hashed the old way past that count are caught. Keep the
exported head (`flask audit head`) somewhere else and pass it to `flask audit verify --head` to
catch a truncated chain too."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from flask import current_app, g, has_request_context, request
from sqlalchemy import bindparam, insert, select, update

from portal.audit import keys
from portal.audit.actor import Actor
from portal.audit.models import AuditEvent, AuditHead
from portal.clock import utcnow
from portal.extensions import db

GENESIS = "0" * 64
HASHED_FIELDS = (
    "seq", "occurred_at", "practice_id", "actor_type", "actor_id", "actor_label", "on_behalf_of",
    "action", "entity_type", "entity_id", "before", "after", "source", "ip", "outcome",
    "correlation_id", "prev_hash",
)
_INSERTED = (*HASHED_FIELDS, "hash", "key_id")  # every column record() sets (not the id)


# Built once: building them for every row cost about as much as running them on SQLite.
# Taking the head stays an ORM statement, so the session flushes the transaction's pending rows
# before it locks the head, as it always did (the head row is never held as an ORM object: nothing
# in the session to keep in step with it). Once the transaction holds the head, the rest are Core
# statements on the tables: no flush before each, none of the ORM's bookkeeping (which took
# longer than the statements).
_NO_SYNC = {"synchronize_session": False}
_TAKE_HEAD = (update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq + 1)
              .returning(AuditHead.seq, AuditHead.hash))
_HEAD, _EVENTS = AuditHead.__table__, AuditEvent.__table__
_SET_HEAD_HASH = update(_HEAD).where(_HEAD.c.id == 1).values(hash=bindparam("head_hash"))
_SET_HEAD = (update(_HEAD).where(_HEAD.c.id == 1)
             .values(seq=bindparam("head_seq"), hash=bindparam("head_hash")))
_INSERT_EVENTS = insert(_EVENTS)


@dataclass
class _Held:
    """The chain head as one transaction holds it inside `held_head()`: taken (and locked) by the
    first row, moved on in memory by the rows after it, written back once when the scope ends,
    with the rows (inserted together then)."""

    transaction: object = None
    seq: int = 0
    hash: str = ""
    taken: bool = False
    rows: list = field(default_factory=list)


_held: ContextVar[_Held | None] = ContextVar("audit_held_head", default=None)


@contextmanager
def held_head():
    """Write the audit rows recorded inside this block with one UPDATE of the chain head to take
    it and one to put it back, instead of two per row, and one INSERT of all the rows as the block
    ends, instead of a flush per row. The rows, their order, seqs and hashes are the same as
    `record()` writes one by one; until the block ends they are not in the database (nor in the
    session: `record()` returns them unsaved), so nothing inside may look them up. For a block
    that ends in the same transaction it started in (an ingest of one order): the rows and the
    head are written as the block ends, before the caller commits; a block that raises writes
    nothing (the caller rolls back)."""
    if _held.get() is not None:  # nested: the outer block writes the head back
        yield
        return
    state = _Held()
    token = _held.set(state)
    try:
        yield
    finally:
        _held.reset(token)
    if state.taken:
        if db.session().get_transaction() is not state.transaction:
            raise RuntimeError("held_head(): the transaction ended inside the block")
        db.session.execute(_INSERT_EVENTS, [{name: getattr(row, name) for name in _INSERTED} for row in state.rows])
        db.session.execute(_SET_HEAD, {"head_seq": state.seq, "head_hash": state.hash})


def canonical(data: dict | None) -> str:
    return json.dumps(data or {}, sort_keys=True, separators=(",", ":"), default=str)


def _payload(row) -> dict:
    payload = {}
    for name in HASHED_FIELDS:
        value = getattr(row, name)
        payload[name] = value.isoformat(timespec="microseconds") if isinstance(value, dt.datetime) else value
    return payload


def legacy_hash(row) -> str:
    """The plain SHA-256 of rows written before the chain was keyed."""
    return hashlib.sha256(canonical(_payload(row)).encode()).hexdigest()


def row_hash(row, ring: keys.Ring | None = None) -> str:
    """The row's hash as its key_id says it was made: an HMAC with that key of the ring, or the
    plain SHA-256 of an unkeyed row. KeyError when the ring lacks the row's key."""
    if not row.key_id:
        return legacy_hash(row)
    ring = ring or keys.ring()
    payload = _payload(row)
    payload["key_id"] = row.key_id
    return ring.sign(row.key_id, canonical(payload).encode())


def correlation_id() -> str:
    if has_request_context():
        if "correlation_id" not in g:
            g.correlation_id = request.headers.get("X-Request-ID", "")[:64] or uuid.uuid4().hex
        return g.correlation_id
    return uuid.uuid4().hex


def _request_actor() -> Actor:
    from flask_login import current_user

    if has_request_context() and current_user and current_user.is_authenticated:
        return Actor.user(current_user)
    return Actor.system()


def record(
    action: str,
    entity_type: str,
    entity_id: object,
    *,
    before: dict | None = None,
    after: dict | None = None,
    actor: Actor | None = None,
    practice_id: int | None = None,
    outcome: str = "ok",
) -> AuditEvent:
    """Add one audit row to the current transaction. The caller's commit makes both durable."""
    actor = actor or _request_actor()
    ring = keys.ring()
    held = _held.get()
    if held is not None and held.taken:
        if db.session().get_transaction() is not held.transaction:
            raise RuntimeError("held_head(): the transaction ended inside the block")
        seq, prev = held.seq + 1, held.hash
    else:
        # Take the chain head first: the UPDATE locks it (row lock on PostgreSQL, the write lock
        # on SQLite) until this transaction ends, so the prev_hash we read stays the newest one.
        seq, prev = db.session.execute(_TAKE_HEAD, execution_options=_NO_SYNC).one()
    source, ip = actor.source, ""
    if has_request_context():
        source = source or f"{request.method} {request.path}"[:120]
        ip = request.remote_addr or ""
    row = AuditEvent(
        seq=seq, occurred_at=utcnow(), practice_id=practice_id, actor_type=actor.kind,
        actor_id=actor.id, actor_label=actor.label[:254], on_behalf_of=actor.on_behalf_of,
        action=action, entity_type=entity_type, entity_id=str(entity_id),
        before=canonical(before), after=canonical(after), source=source, ip=ip,
        outcome=outcome, correlation_id=correlation_id(), prev_hash=prev or GENESIS,
        key_id=ring.signing_id,
    )
    row.hash = row_hash(row, ring)
    if held is not None:
        if not held.taken:
            held.transaction, held.taken = db.session().get_transaction(), True
        held.seq, held.hash = seq, row.hash
        held.rows.append(row)
        return row
    db.session.execute(_SET_HEAD_HASH, {"head_hash": row.hash})
    db.session.add(row)
    db.session.flush()
    return row


@dataclass
class ChainProblem:
    seq: int
    message: str


@dataclass
class Walk:
    """What verify_chain saw, besides the problems."""

    rows: int = 0
    legacy_rows: int = 0


def parse_head(text: str) -> tuple[int, str]:
    """"<rows>:<hash>" as `flask audit head` prints it."""
    count, _, digest = (text or "").strip().partition(":")
    if not count.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("an exported head looks like 1234:<64 hex digits>, as `flask audit head` prints it")
    return int(count), digest


def head() -> tuple[int, str]:
    """(rows, hash of the last row): the chain head to keep outside the database."""
    last = db.session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    return (last.seq, last.hash) if last else (0, GENESIS)


def verify_chain(batch: int = 2000, expected_head: tuple[int, str] | None = None,
                 walk: Walk | None = None) -> Iterator[ChainProblem]:
    """Walk the whole chain in order; yield every place it is broken. With `expected_head`
    (an exported head), also check the chain still reaches it and the row there is unchanged."""
    ring = keys.ring()
    legacy_limit = int(current_app.config.get("AUDIT_LEGACY_ROWS", 0) or 0)
    walk = walk if walk is not None else Walk()
    expected_prev, expected_seq, last = GENESIS, 1, 0
    after_seq = 0
    keyed_seen = False
    head_hash_found = None
    while True:
        # Plain rows, not ORM objects: nothing piles up in the session on a long chain.
        rows = db.session.execute(
            select(*AuditEvent.__table__.c).where(AuditEvent.seq > after_seq)
            .order_by(AuditEvent.seq).limit(batch)
        ).all()
        if not rows:
            break
        for row in rows:
            walk.rows += 1
            if row.seq != expected_seq:
                yield ChainProblem(row.seq, f"row {expected_seq} is missing (next row is {row.seq})")
            if row.prev_hash != expected_prev:
                yield ChainProblem(row.seq, f"row {row.seq} does not follow the row before it")
            if not row.key_id:
                walk.legacy_rows += 1
                if keyed_seen or row.seq > legacy_limit:
                    yield ChainProblem(row.seq, f"row {row.seq} has a plain SHA-256 hash, not the keyed one: "
                                                f"only the first {legacy_limit} rows (AUDIT_LEGACY_ROWS) "
                                                "predate the keyed chain")
                elif legacy_hash(row) != row.hash:
                    yield ChainProblem(row.seq, f"row {row.seq} was altered (its hash no longer matches)")
            elif row.key_id not in ring.keys:
                keyed_seen = True
                yield ChainProblem(row.seq, f"row {row.seq} was signed with key {row.key_id}, which is not "
                                            "in AUDIT_CHAIN_KEYS (keep old keys in the ring)")
            else:
                keyed_seen = True
                if not hmac.compare_digest(row_hash(row, ring), row.hash):
                    yield ChainProblem(row.seq, f"row {row.seq} was altered (its hash no longer matches)")
            if expected_head and row.seq == expected_head[0]:
                head_hash_found = row.hash
            expected_prev, expected_seq, last = row.hash, row.seq + 1, row.seq
        after_seq = rows[-1].seq
    head_row = db.session.get(AuditHead, 1)
    if head_row is not None and head_row.seq != last:
        yield ChainProblem(last, f"the chain ends at row {last} but {head_row.seq} rows were written")
    if expected_head and expected_head[0]:
        count, digest = expected_head
        if last < count:
            yield ChainProblem(last, f"the chain ends at row {last} but the exported head has {count} rows")
        elif head_hash_found is None or not hmac.compare_digest(head_hash_found, digest):
            yield ChainProblem(count, f"row {count} does not match the exported head (the chain was "
                                      "rewritten up to there)")
