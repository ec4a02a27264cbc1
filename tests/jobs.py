"""Helpers shared by the tests that run RQ jobs and talk to servers on loopback."""
from __future__ import annotations

import socket
import time
import uuid

from rq import SimpleWorker
from rq.job import Job

from portal.extensions import db


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(queue, timeout: float = 15.0, wait_for_scheduled: bool = True) -> None:
    """Run queued jobs in this process, and scheduled ones once due, until none are left
    (with wait_for_scheduled=False: until nothing is queued or due now)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        SimpleWorker([queue], connection=queue.connection, name=f"test-{uuid.uuid4().hex[:8]}").work(
            burst=True, with_scheduler=False)
        registry = queue.scheduled_job_registry
        due = registry.get_jobs_to_schedule(int(time.time()) + 1)
        for job_id in due:
            job = Job.fetch(job_id, connection=queue.connection)
            registry.remove(job)
            queue._enqueue_job(job)
        waiting = registry.get_job_ids() if wait_for_scheduled else []
        if not due and not waiting and not queue.count:
            db.session.expire_all()
            return
        if not due:
            time.sleep(0.05)
    raise AssertionError("jobs still waiting after the timeout")


def what_the_horse_found() -> dict:
    """A job for tests/test_worker.py: what a work horse had before the job ran anything."""
    import sys

    import jobs

    return {"app_built": jobs._app is not None, "jobs_dispatch_imported": "jobs.dispatch" in sys.modules}
