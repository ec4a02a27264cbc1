"""The worker class production runs (jobs/worker.py): rq's forking Worker, with the app loaded
before it forks, so a work horse starts with it instead of building it for each job."""
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job

ROOT = Path(__file__).resolve().parents[1]


def _horse_found(app, worker_args: list[str]) -> dict:
    from portal.queue import redis_connection

    queue = Queue(f"worker-test-{uuid.uuid4().hex[:8]}", connection=redis_connection(app.config["REDIS_URL"]))
    job = queue.enqueue("tests.jobs.what_the_horse_found", result_ttl=60)
    env = os.environ.copy()
    env.update(DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"], REDIS_URL=app.config["REDIS_URL"],
               SECRET_KEY="test-secret-key", LM_ENV="development")
    subprocess.run([str(Path(sys.executable).parent / "rq"), "worker", "--burst", *worker_args,
                    "--url", app.config["REDIS_URL"], "--path", str(ROOT), queue.name],
                   env=env, cwd=ROOT, check=True, timeout=60, capture_output=True)
    job = Job.fetch(job.id, connection=queue.connection)
    try:
        assert job.is_finished, job.latest_result()
        return job.return_value()
    finally:
        job.delete()
        queue.delete(delete_jobs=True)


@pytest.mark.slow
def test_the_production_worker_forks_horses_with_the_app_already_built(app):
    assert _horse_found(app, ["--worker-class", "jobs.worker.Worker"]) == {
        "app_built": True, "jobs_dispatch_imported": True}


@pytest.mark.slow
def test_plain_rq_worker_builds_the_app_in_every_horse(app):
    """Why the README names the worker class: each job would pay for imports and create_app."""
    assert _horse_found(app, []) == {"app_built": False, "jobs_dispatch_imported": False}
