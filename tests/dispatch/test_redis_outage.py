"""Surviving a Redis outage: the database is the record. A retry RQ still holds as "scheduled"
long after it was due (its scheduler died with Redis) is enqueued by the sweep; a worker whose
scheduler died exits non-zero so that its supervisor starts a fresh one."""
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq.job import Job, JobStatus

from portal.dispatch import services
from portal.dispatch.models import Dispatch, DispatchState
from portal.extensions import db
from portal.practices.models import utcnow
from portal.queue import get_queue
from tests.dispatch.conftest import free_port, run_jobs, start_redis, stop_redis
from tests.dispatch.test_delivery import _send, _worker_env

ROOT = Path(__file__).resolve().parents[2]
RQ = str(Path(sys.executable).parent / "rq")


def _stranded(queue, dispatch: Dispatch, late: dt.timedelta) -> Job:
    """Leave the dispatch's retry as a dead scheduler leaves it: scheduled in RQ for `late` ago,
    and due in the database as long ago."""
    job = queue.fetch_job(dispatch.job_id)
    assert job is not None and job.get_status() == JobStatus.SCHEDULED
    queue.scheduled_job_registry.schedule(job, dt.datetime.now(dt.UTC) - late)
    dispatch.next_attempt_at = utcnow() - late
    db.session.commit()
    return job


def test_the_sweep_enqueues_a_retry_overdue_past_the_grace_whatever_redis_says(world, api_lab, stub, queue,
                                                                              fast, monkeypatch):
    monkeypatch.setitem(fast, "OUTBOX_GRACE_SECONDS", 60)
    fast["DISPATCH_RETRY_SCHEDULE"] = (600, 600)
    stub.script = [503]
    dispatch = _send(world, api_lab)
    assert run_jobs(queue) == [{"retry scheduled": 1}]
    db.session.refresh(dispatch)
    _stranded(queue, dispatch, dt.timedelta(seconds=20))
    assert services.sweep() == 1 and queue.count == 0  # late, but within the grace: the scheduler's
    _stranded(queue, dispatch, dt.timedelta(minutes=5))
    assert services.sweep() == 1 and queue.count == 1  # five minutes late: the sweep does not wait
    assert queue.fetch_job(dispatch.job_id).get_status() == JobStatus.QUEUED
    assert services.sweep() == 1 and queue.count == 1  # and it is queued once
    assert run_jobs(queue) == ["delivered"]
    db.session.refresh(dispatch)
    assert dispatch.state is DispatchState.DELIVERED and len(stub.orders) == 1


def test_the_database_decides_even_when_redis_says_later(world, api_lab, stub, queue, fast, monkeypatch):
    """RQ's schedule says the retry is hours away, the database says it was due five minutes ago
    (a Redis restored from an old snapshot, a clock fixed): the database wins."""
    monkeypatch.setitem(fast, "OUTBOX_GRACE_SECONDS", 60)
    fast["DISPATCH_RETRY_SCHEDULE"] = (6 * 3600, 600)
    stub.script = [503]
    dispatch = _send(world, api_lab)
    run_jobs(queue)
    db.session.refresh(dispatch)
    dispatch.next_attempt_at = utcnow() - dt.timedelta(minutes=5)
    db.session.commit()
    assert services.sweep() == 1 and queue.count == 1
    assert run_jobs(queue) == ["delivered"]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_redis_stopped_and_restarted_mid_retry(app, world, api_lab, stub, fast, tmp_path, monkeypatch):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis(port, data_dir=tmp_path)
    fast["REDIS_URL"] = url
    fast["DISPATCH_RETRY_SCHEDULE"] = (5, 5)
    monkeypatch.setitem(app.config, "OUTBOX_GRACE_SECONDS", 3)
    env = dict(_worker_env(app, url), DISPATCH_RETRY_SCHEDULE="5,5")
    log = (tmp_path / "worker.log").open("wb")
    stub.script = [503]  # the lab is down for the first attempt, then back
    worker = subprocess.Popen([RQ, "worker", "--worker-class", "jobs.worker.Worker", "--with-scheduler",
                               "--url", url, "--path", str(ROOT), "--name", f"outage-{os.getpid()}-{time.time_ns()}",
                               app.config["RQ_QUEUE"]], env=env, cwd=ROOT, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=log)
    try:
        # The worker's scheduler is up (it holds the lock) before the first attempt.
        import redis as redis_py

        probe = redis_py.Redis.from_url(url)
        _wait(lambda: probe.get(f"rq:scheduler-lock:{app.config['RQ_QUEUE']}"), 30, "the worker's scheduler")
        dispatch = _send(world, api_lab)

        def retrying():
            db.session.expire_all()
            return dispatch.attempts == 1 and dispatch.state is DispatchState.PENDING

        _wait(retrying, 30, "the first attempt")
        assert get_queue().fetch_job(dispatch.job_id).get_status() == JobStatus.SCHEDULED  # 5 s from now
        stop_redis(server, port, save=True)  # Redis goes away with the retry in RQ's schedule...
        time.sleep(8)
        server = start_redis(port, data_dir=tmp_path)  # ...and comes back with it, now overdue
        # The worker noticed its scheduler died and stopped, non-zero, for its supervisor to restart.
        status = _wait(lambda: worker.poll() is not None and (worker.returncode,), 30, "the worker to exit")
        assert status == (1,), (tmp_path / "worker.log").read_text()[-2000:]
        db.session.expire_all()
        assert dispatch.state is DispatchState.PENDING and dispatch.attempts == 1  # nothing moved meanwhile
        queue = get_queue()
        assert queue.fetch_job(dispatch.job_id).get_status() == JobStatus.SCHEDULED  # still, in Redis
        assert services.sweep() == 1 and queue.count == 1  # the sweep does not wait for a scheduler
        # The supervisor's fresh worker (burst here, so the test ends) delivers it, once.
        subprocess.run([RQ, "worker", "--burst", "--worker-class", "jobs.worker.Worker", "--url", url,
                        "--path", str(ROOT), app.config["RQ_QUEUE"]], env=env, cwd=ROOT, check=True, timeout=60,
                       capture_output=True)
        db.session.expire_all()
        assert dispatch.state is DispatchState.DELIVERED and dispatch.attempts == 2
        assert len(stub.orders) == 1 and len(stub.requests) == 2
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        log.close()
        stop_redis(server, port)
