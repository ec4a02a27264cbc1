"""The one helper that writes audit rows (A1-A3), and the chain check."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from flask import g, has_request_context, request
from sqlalchemy import bindparam, select, update

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


# The head row is never held as an ORM object while audit rows are written, so the session need
# not search itself for one to update after each of these statements (every state change pays it).
_NO_SYNC = {"synchronize_session": False}
# Built once: building them for every row cost about as much as running them on SQLite.
_TAKE_HEAD = (update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq + 1)
              .returning(AuditHead.seq, AuditHead.hash))
_SET_HEAD_HASH = update(AuditHead).where(AuditHead.id == 1).values(hash=bindparam("head_hash"))


def canonical(data: dict | None) -> str:
    return json.dumps(data or {}, sort_keys=True, separators=(",", ":"), default=str)


def row_hash(row: AuditEvent) -> str:
    payload = {}
    for name in HASHED_FIELDS:
        value = getattr(row, name)
        payload[name] = value.isoformat(timespec="microseconds") if isinstance(value, dt.datetime) else value
    return hashlib.sha256(canonical(payload).encode()).hexdigest()


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
    # Take the chain head first: the UPDATE locks it (row lock on PostgreSQL, the write lock on
    # SQLite) until this transaction ends, so the prev_hash we read stays the newest one.
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
    )
    row.hash = row_hash(row)
    db.session.execute(_SET_HEAD_HASH, {"head_hash": row.hash}, execution_options=_NO_SYNC)
    db.session.add(row)
    db.session.flush()
    return row


@dataclass
class ChainProblem:
    seq: int
    message: str


def verify_chain(batch: int = 2000) -> Iterator[ChainProblem]:
    """Walk the whole chain in order; yield every place it is broken."""
    expected_prev, expected_seq, last = GENESIS, 1, 0
    after_seq = 0
    while True:
        # Plain rows, not ORM objects: nothing piles up in the session on a long chain.
        rows = db.session.execute(
            select(*AuditEvent.__table__.c).where(AuditEvent.seq > after_seq)
            .order_by(AuditEvent.seq).limit(batch)
        ).all()
        if not rows:
            break
        for row in rows:
            if row.seq != expected_seq:
                yield ChainProblem(row.seq, f"row {expected_seq} is missing (next row is {row.seq})")
            if row.prev_hash != expected_prev:
                yield ChainProblem(row.seq, f"row {row.seq} does not follow the row before it")
            if row_hash(row) != row.hash:
                yield ChainProblem(row.seq, f"row {row.seq} was altered (its hash no longer matches)")
            expected_prev, expected_seq, last = row.hash, row.seq + 1, row.seq
        after_seq = rows[-1].seq
    head = db.session.get(AuditHead, 1)
    if head is not None and head.seq != last:
        yield ChainProblem(last, f"the chain ends at row {last} but {head.seq} rows were written")
