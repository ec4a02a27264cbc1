"""Fixtures for sending to labs: a lab stub, an API lab pointing at it, a clean queue, a drain helper."""
from __future__ import annotations

import socket
import subprocess
import time

import pytest
from rq.job import Job

from portal.dispatch import services
from portal.extensions import db as _db
from portal.queue import get_queue
from tests.dispatch.labstub import LabStub
from tests.jobs import drain, free_port  # noqa: F401  (imported by the tests from here)

SECRET = "whsec_dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ="  # tests/factories.py gives API labs this one


@pytest.fixture()
def fast(app):
    """Small backoff and timeouts, restored afterwards."""
    saved = {k: app.config[k] for k in ("DISPATCH_RETRY_SCHEDULE", "DISPATCH_BATCH_SIZE", "DISPATCH_BATCH_SECONDS", "LAB_API_TIMEOUT",
                                        "REDIS_URL")}
    app.config.update(DISPATCH_RETRY_SCHEDULE=(0.01, 0.02, 0.05), LAB_API_TIMEOUT=2.0)  # four attempts
    yield app.config
    app.config.update(saved)


@pytest.fixture()
def queue(app, db, fast):
    q = get_queue()
    _clean(q)
    yield q
    _clean(q)


def _clean(q) -> None:
    from rq.exceptions import NoSuchJobError

    q.empty()
    for key in q.connection.scan_iter("labmanager:once:*"):  # the claims of jobs now gone
        q.connection.delete(key)
    for registry in (q.scheduled_job_registry, q.failed_job_registry, q.finished_job_registry):
        for job_id in registry.get_job_ids():
            try:
                Job.fetch(job_id, connection=q.connection).delete()
            except (NoSuchJobError, ValueError):  # ValueError: RQ lost track of one of its executions
                registry.remove(job_id)


@pytest.fixture()
def stub():
    from portal.outbound import close_client

    lab = LabStub(secrets=[SECRET]).start()
    yield lab
    close_client()  # its kept-alive connections point at this stub
    lab.stop()


@pytest.fixture()
def api_lab(world, stub):
    lab = world.labs["api"]
    lab.api_url = stub.url
    _db.session.commit()
    return lab


def run_jobs(queue) -> list:
    """Run the jobs waiting in `queue` in this process, in order, as one worker would, and return
    their results. Quicker than `drain` for many small jobs: a burst worker takes a second to stop."""
    results = []
    while queue.count:
        job = Job.fetch(queue.pop_job_id(), connection=queue.connection)
        results.append(job.perform())
        job.delete()
    _db.session.expire_all()
    return results


def start_redis(port: int, data_dir=None) -> subprocess.Popen:
    """A redis-server of the test's own on `port`. With `data_dir` it keeps its data there across a
    restart when stopped with `stop_redis(port, save=True)`, as a production Redis with persistence does."""
    keep = ["--dir", str(data_dir), "--dbfilename", "dump.rdb"] if data_dir is not None else []
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", *keep], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise AssertionError("redis-server did not start")


def stop_redis(proc: subprocess.Popen, port: int, save: bool = False) -> None:
    import redis

    try:
        redis.Redis(port=port, socket_timeout=5).shutdown(save=save, nosave=not save)
    except redis.ConnectionError:
        pass  # it closes the connection as it goes
    proc.wait(10)


__all__ = ["drain", "run_jobs", "free_port", "start_redis", "stop_redis", "services", "SECRET"]
