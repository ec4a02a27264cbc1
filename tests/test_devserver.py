"""`make run` (portal/devserver.py) keeps the worker and the outbox sweep running: `rq cron` exits
when Redis goes away, and a worker whose scheduler died exits; both are started again."""
from __future__ import annotations

import os
import time

import pytest

from portal import devserver
from tests.dispatch.conftest import start_redis, stop_redis
from tests.jobs import free_port


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_the_sweep_and_the_worker_come_back_after_redis_did(app, tmp_path):
    port = free_port()
    server = start_redis(port)
    env = os.environ.copy()
    env.update(REDIS_URL=f"redis://127.0.0.1:{port}/0", DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
               SECRET_KEY="test-secret-key", LM_ENV="development", RQ_QUEUE=f"devserver-{port}")
    services = devserver.background_services(env)
    try:
        worker, cron = services
        assert worker.restart and cron.restart
        time.sleep(3)
        assert all(s.check() for s in services) and cron.starts == 1 and worker.starts == 1
        stop_redis(server, port)
        _wait(lambda: cron.proc.poll() is not None, 30, "rq cron to exit with Redis gone")
        server = start_redis(port)
        assert all(s.check() for s in services)  # the supervisor loop: what exited starts again
        assert cron.starts == 2 and cron.proc.poll() is None
        time.sleep(2)
        assert cron.proc.poll() is None  # and stays up, Redis being back
    finally:
        for s in services:
            if s.proc.poll() is None:
                s.proc.terminate()
                s.proc.wait(10)
        stop_redis(server, port)


def test_a_service_that_is_not_restarted_stops_the_demo(tmp_path):
    import sys

    once = devserver.Service("a helper", lambda _: [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ))
    again = devserver.Service("a job process", lambda n: [sys.executable, "-c", f"raise SystemExit({n})"],
                              dict(os.environ), restart=True, delay=0)
    once.proc.wait(10)
    again.proc.wait(10)
    assert once.check() is False
    assert again.check() is True and again.starts == 2
    assert again.proc.wait(10) == 2  # the second start
