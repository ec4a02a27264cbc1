"""RQ plumbing: the Redis connection, the queue, and enqueue-after-commit (the outbox relay).

Work that must not be lost is written to the database first (an outbox row) in the request's
transaction. `enqueue_after_commit` hands the job to RQ only once that transaction has committed;
if Redis is down at that moment the row stays pending and the periodic sweep enqueues it later.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import redis
from flask import current_app
from rq import Queue
from sqlalchemy import event
from sqlalchemy.orm import Session

from portal.extensions import db

log = logging.getLogger(__name__)
_connections: dict[str, redis.Redis] = {}
_PENDING = "labmanager_after_commit_jobs"


def redis_connection(url: str | None = None) -> redis.Redis:
    url = url or current_app.config["REDIS_URL"]
    if not url:
        raise RuntimeError("REDIS_URL is not set (make run starts an embedded Redis and sets it)")
    if url not in _connections:
        _connections[url] = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    return _connections[url]


def get_queue(name: str | None = None) -> Queue:
    return Queue(name or current_app.config["RQ_QUEUE"], connection=redis_connection())


def enqueue_after_commit(func: Callable | str, *args, job_id: str, **options) -> None:
    """Enqueue `func(*args)` with a deterministic `job_id` once the current transaction commits."""
    session = db.session()
    session.info.setdefault(_PENDING, []).append((func, args, job_id, options, get_queue()))


def enqueue_once_after_commit(key: str, func: Callable | str, *args, window: int = 60, **options) -> None:
    """Enqueue `func(*args)` after the commit unless a job for `key` is already waiting.

    For work that drains a backlog (a lab's stored events): many requests in a burst share one
    job. The first claims `key` in Redis (SET NX with a `window`-second expiry) and enqueues a job
    with a fresh id; the others see the claim and enqueue nothing. The job calls `release(key)`
    before it reads its backlog, so anything committed after that read starts a new job, and a
    job that died lets the claim lapse after `window` seconds (the sweep covers the gap).
    """
    session = db.session()
    session.info.setdefault(_PENDING, []).append((func, args, None, {"once": key, "window": window, **options},
                                                  get_queue()))


def release(key: str) -> None:
    """Let the next `enqueue_once_after_commit(key, ...)` enqueue a job again (called by that job)."""
    try:
        redis_connection().delete(_claim_key(key))
    except redis.RedisError as exc:  # the claim lapses on its own
        log.warning("could not release %s (%s)", key, exc.__class__.__name__)


def enqueue_once(queue: Queue, key: str, func: Callable | str, *args, window: int = 60, **options) -> bool:
    """Claim `key` and enqueue a job for it; False when a job is already waiting or Redis is away."""
    import uuid

    claim = _claim_key(key)
    try:
        if not queue.connection.set(claim, 1, nx=True, ex=window):
            return False
    except redis.RedisError as exc:
        log.warning("could not claim %s (%s); the outbox sweep will retry", key, exc.__class__.__name__)
        return False
    if enqueue_now(queue, func, *args, job_id=f"{key}-{uuid.uuid4().hex[:12]}", **options):
        return True
    try:
        queue.connection.delete(claim)
    except redis.RedisError:
        pass
    return False


def _claim_key(key: str) -> str:
    return f"labmanager:once:{key}"


def enqueue_now(queue: Queue, func: Callable | str, *args, job_id: str, **options) -> bool:
    """Enqueue, tolerating a job id that is already queued and a Redis that is down.
    Returns False when Redis could not be reached (the sweep will try again).

    A job id that is new (the usual case, straight after a commit) costs no look-up first:
    `unique=True` refuses an existing one, and only then is its status checked. A job still
    queued, scheduled or running is left alone; a finished or failed one is replaced.
    """
    from rq.exceptions import DuplicateJobError
    from rq.job import Job, JobStatus

    try:
        try:
            queue.enqueue(func, *args, job_id=job_id, unique=True, **options)
            return True
        except DuplicateJobError:
            pass
        existing = Job.fetch(job_id, connection=queue.connection) if _job_exists(queue, job_id) else None
        if existing is not None and existing.get_status(refresh=True) in (
                JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
            return True
        if existing is not None:
            existing.delete()
        queue.enqueue(func, *args, job_id=job_id, unique=True, **options)
        return True
    except DuplicateJobError:
        return True
    except redis.RedisError as exc:
        log.warning("could not enqueue %s (%s); the outbox sweep will retry", job_id, exc.__class__.__name__)
        return False


def _job_exists(queue: Queue, job_id: str) -> bool:
    from rq.job import Job

    return bool(queue.connection.exists(Job.key_for(job_id)))


@event.listens_for(Session, "after_commit")
def _relay(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    for func, args, job_id, options, queue in pending or ():
        if "once" in options:
            enqueue_once(queue, options.pop("once"), func, *args, **options)
        else:
            enqueue_now(queue, func, *args, job_id=job_id, **options)


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)
