"""RQ plumbing: the Redis connection, the queue, the registry of jobs, and enqueue-after-commit
(the outbox relay).

Work that must not be lost is written to the database first (an outbox row) in the request's
transaction. `enqueue_after_commit` hands the job to RQ only once that transaction has committed;
if Redis is down at that moment the row stays pending and the periodic sweep enqueues it later.

Every job is named once, here, by a `JobSpec` in `JOBS`: the function RQ imports in the work
horse (an entry point in jobs/), its time limit, retry policy, failure callback and how long RQ
keeps its result. Callers enqueue a spec (`enqueue_after_commit(queue.DELIVER_WORK_ORDER, ...)`),
never a dotted string.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

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


# -- the registry of jobs ------------------------------------------------------------------------------

DAY = 86400


@dataclass(frozen=True)
class JobSpec:
    """One kind of RQ job. `timeout` is seconds, or a function of the app's config; `retry` (a
    function of the config returning an rq.Retry or None) is RQ's own retry, for jobs that raise
    to be tried again (mail); `on_failure` is the dotted path of RQ's failure callback."""

    name: str
    func: str
    timeout: int | Callable[[Mapping], int]
    result_ttl: int | None = 3600
    failure_ttl: int | None = 7 * DAY
    on_failure: str | None = None
    retry: Callable[[Mapping], object] | None = field(default=None, compare=False)

    def job_timeout(self, config: Mapping | None = None) -> int:
        return self.timeout(config or current_app.config) if callable(self.timeout) else self.timeout

    def options(self, config: Mapping | None = None, **overrides) -> dict:
        """The keyword arguments of Queue.enqueue for this job (`overrides` win)."""
        from rq import Callback

        config = config or current_app.config
        options: dict = {"job_timeout": self.job_timeout(config)}
        if self.result_ttl is not None:
            options["result_ttl"] = self.result_ttl
        if self.failure_ttl is not None:
            options["failure_ttl"] = self.failure_ttl
        if self.on_failure:
            options["on_failure"] = Callback(self.on_failure)
        retry = self.retry(config) if self.retry else None
        if retry is not None:
            options["retry"] = retry
        options.update(overrides)
        return options

    @property
    def module(self) -> str:
        return self.func.rsplit(".", 1)[0]


def lab_api_job_timeout(config: Mapping) -> int:
    """Longer than one attempt's HTTP timeouts to a lab API added up (connect, write, read, pool)."""
    return math.ceil(4 * float(config["LAB_API_TIMEOUT"])) + 2


def _drain_timeout(config: Mapping) -> int:
    """A lab's drain job starts no attempt after DISPATCH_BATCH_SECONDS; the one under way ends
    within one attempt's timeouts."""
    return math.ceil(float(config["DISPATCH_BATCH_SECONDS"])) + lab_api_job_timeout(config)


def scanner_job_timeout(config: Mapping) -> int:
    """Longer than one Rx attempt's calls added up: discovery and a token refresh, the practice
    configuration and the call itself, each within SCANNER_HTTP_TIMEOUT per phase."""
    return int(8 * float(config["SCANNER_HTTP_TIMEOUT"])) + 10


def _mail_timeout(config: Mapping) -> int:
    # Connect, STARTTLS, login and DATA each wait at most SMTP_TIMEOUT.
    return int(max(60, 5 * float(config.get("SMTP_TIMEOUT", 10))))


def _mail_retry(config: Mapping):
    from rq import Retry

    intervals = list(config.get("MAIL_RETRY_INTERVALS", (10, 60, 300)))
    return Retry(max=len(intervals), interval=intervals) if intervals else None


def _spec(*args, **kwargs) -> JobSpec:
    spec = JobSpec(*args, **kwargs)
    JOBS[spec.name] = spec
    return spec


JOBS: dict[str, JobSpec] = {}
# Lab API (portal/dispatch): a work order's attempt, a lab's drain job of first attempts, an order event.
DELIVER_WORK_ORDER = _spec("dispatch.deliver", "jobs.dispatch.deliver", lab_api_job_timeout,
                           on_failure="jobs.dispatch.on_failure")
DELIVER_DUE = _spec("dispatch.deliver_due", "jobs.dispatch.deliver_due", _drain_timeout)
DELIVER_NOTICE = _spec("notices.deliver", "jobs.notices.deliver", lab_api_job_timeout,
                       on_failure="jobs.notices.on_failure")
# A lab's stored status events, applied to their cases (portal/labapi).
APPLY_LAB_EVENTS = _spec("labapi.apply_pending", "jobs.labapi.apply_pending", 600)
APPLY_LAB_EVENT = _spec("labapi.apply_event", "jobs.labapi.apply_event", 600)
# The mail outbox (portal/mail): RQ retries a transient SMTP failure (MAIL_RETRY_INTERVALS).
SEND_MAIL = _spec("mail.send", "jobs.mail.send", _mail_timeout, result_ttl=None, failure_ttl=None,
                  retry=_mail_retry)
# Scanner vendors: a poll (it pages through the vendor), their notifications, a large upload read.
SCANNER_SYNC = _spec("scanners.sync", "jobs.scanners.sync", 600)
SCANNER_EVENTS = _spec("scanners.handle_events", "jobs.scanners.handle_events", 600)
INSPECT_SCAN_FILE = _spec("scanners.inspect_file", "jobs.scanners.inspect_file", 600,
                          on_failure="jobs.scanners.inspect_failed")
# An iTero Rx of a case: send it, withdraw it, return a scan to the doctor.
SEND_RX = _spec("itero.send_rx", "jobs.itero.send_rx", scanner_job_timeout)
WITHDRAW_RX = _spec("itero.withdraw_rx", "jobs.itero.withdraw_rx", scanner_job_timeout)
RETURN_TO_DOCTOR = _spec("itero.return_to_doctor", "jobs.itero.return_to_doctor", scanner_job_timeout)
# A case's lab case in the practice's PMS (portal/integrations/writeback.py): create or update it.
PMS_WRITE = _spec("pms.write_lab_case", "jobs.pms.write_lab_case", scanner_job_timeout)
# The outbox sweep, run every OUTBOX_SWEEP_SECONDS by `rq cron` (jobs/sweep.py).
SWEEP = _spec("sweep", "jobs.sweep.run", 120, result_ttl=600, failure_ttl=DAY)


def job_modules() -> tuple[str, ...]:
    """The modules RQ imports by name in a work horse (jobs/worker.py loads them before forking)."""
    return tuple(dict.fromkeys(m for spec in JOBS.values()
                               for m in (spec.module, spec.on_failure and spec.on_failure.rsplit(".", 1)[0]) if m))


def enqueue_after_commit(spec: JobSpec, *args, job_id: str, **overrides) -> None:
    """Enqueue the job `spec` with `args` and a deterministic `job_id` once the current
    transaction commits."""
    session = db.session()
    session.info.setdefault(_PENDING, []).append((spec.func, args, job_id, spec.options(**overrides), get_queue()))


def enqueue_once_after_commit(key: str, spec: JobSpec, *args, window: int = 60, **overrides) -> None:
    """Enqueue the job `spec` with `args` after the commit unless a job for `key` is already waiting.

    For work that drains a backlog (a lab's stored events): many requests in a burst share one
    job. The first claims `key` in Redis (SET NX with a `window`-second expiry) and enqueues a job
    with a fresh id; the others see the claim and enqueue nothing. The job calls `release(key)`
    before it reads its backlog, so anything committed after that read starts a new job, and a
    job that died lets the claim lapse after `window` seconds (the sweep covers the gap).
    """
    session = db.session()
    session.info.setdefault(_PENDING, []).append(
        (spec.func, args, None, {"once": key, "window": window, **spec.options(**overrides)}, get_queue()))


def release(key: str) -> None:
    """Let the next `enqueue_once_after_commit(key, ...)` enqueue a job again (called by that job)."""
    try:
        redis_connection().delete(_claim_key(key))
    except redis.RedisError as exc:  # the claim lapses on its own
        log.warning("could not release %s (%s)", key, exc.__class__.__name__)


def enqueue_once(queue: Queue, key: str, spec: JobSpec | str, *args, window: int = 60, **options) -> bool:
    """Claim `key` and enqueue a job for it; False when a job is already waiting or Redis is away.
    (`spec` may be a spec's function path: the relay hands over what it stored.)"""
    import uuid

    if isinstance(spec, JobSpec):
        spec, options = spec.func, spec.options(**options)
    func = spec
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


def enqueue_now(queue: Queue, spec: JobSpec | str, *args, job_id: str, due_at: dt.datetime | None = None,
                **options) -> bool:
    """Enqueue, tolerating a job id that is already queued and a Redis that is down.
    Returns False when Redis could not be reached (the sweep will try again).

    A job id that is new (the usual case, straight after a commit) costs no look-up first:
    `unique=True` refuses an existing one, and only then is its status checked. A job still
    queued or running is left alone; a finished or failed one is replaced. A scheduled one is
    left alone too, unless it is overdue by more than OUTBOX_GRACE_SECONDS, by the database's
    time of the row's next attempt (`due_at`, naive UTC) or by RQ's own schedule: then the
    scheduler that should have moved it is gone (it dies when Redis goes away; jobs/worker.py),
    and the job is put on the queue now. The database is the record, not Redis.
    """
    from rq.exceptions import DuplicateJobError
    from rq.job import Job, JobStatus

    if isinstance(spec, JobSpec):
        spec, options = spec.func, spec.options(**options)
    func = spec
    try:
        try:
            queue.enqueue(func, *args, job_id=job_id, unique=True, **options)
            return True
        except DuplicateJobError:
            pass
        existing = Job.fetch(job_id, connection=queue.connection) if _job_exists(queue, job_id) else None
        status = existing.get_status(refresh=True) if existing is not None else None
        if status == JobStatus.SCHEDULED and _overdue(queue, existing, due_at):
            log.warning("%s was due long ago and is still waiting for RQ's scheduler; enqueued now", job_id)
        elif status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
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


def grace_seconds() -> float:
    """How late a scheduled job may be before the sweep stops waiting for RQ's scheduler."""
    return float(current_app.config.get("OUTBOX_GRACE_SECONDS", 60))


def _overdue(queue: Queue, job, due_at: dt.datetime | None) -> bool:
    from rq.exceptions import NoSuchJobError

    now = dt.datetime.now(dt.UTC)
    cutoff = now - dt.timedelta(seconds=grace_seconds())
    if due_at is not None and due_at.replace(tzinfo=dt.UTC) <= cutoff:
        return True
    try:
        when = queue.scheduled_job_registry.get_scheduled_time(job)
    except NoSuchJobError:
        return True  # "scheduled", yet in no schedule: nothing will ever move it
    return when.replace(tzinfo=when.tzinfo or dt.UTC) <= cutoff


def schedule(spec: JobSpec, *args, job_id: str, delay: float, **overrides) -> bool:
    """The job `spec` in `delay` seconds, via RQ's scheduler (workers run --with-scheduler). If
    Redis is away the row is still pending with its next attempt's time, and the outbox sweep
    enqueues it once due; False then."""
    try:
        get_queue().enqueue_in(dt.timedelta(seconds=delay), spec.func, *args, job_id=job_id, **spec.options(**overrides))
        return True
    except redis.RedisError as exc:
        log.warning("could not schedule %s (%s); the outbox sweep will", job_id, exc.__class__.__name__)
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
