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
        enqueue_now(queue, func, *args, job_id=job_id, **options)


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)
