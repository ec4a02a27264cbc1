"""The RQ worker class to run in production: rq's forking Worker, with the app loaded before it forks.

    rq worker --worker-class jobs.worker.Worker --with-scheduler --url "$REDIS_URL" --path . labmanager

Plain `rq worker` forks a fresh work horse for every job, and nothing of the app is loaded in the
worker that forks it, so every job paid for importing the portal and building the Flask app
(about 0.8 s here), then an HTTP client with its TLS context and its first SQL compilations:
about one work order a second, whatever the job did. RQ's documentation ("Performance notes")
suggests loading what jobs need before the fork. This class does that once, in the worker:
the app, every job module, the models' mappers and the TLS context of the client that talks to
labs. Each work horse still runs in its own process (a job that crashes or leaks takes only its
horse with it, and RQ's job timeouts kill the horse), but starts with all of that in place.

Nothing here opens a database or HTTP connection in the worker, so a horse never shares one with
its parent; the database pool is also dropped in the horse before it runs a job, as SQLAlchemy
advises for forked processes (`Engine.dispose(close=False)`).
"""
from __future__ import annotations

import importlib

import rq


class Worker(rq.Worker):
    def work(self, *args, **kwargs):
        preload()  # here rather than in __init__: `rq info` builds Worker objects too
        return super().work(*args, **kwargs)

    def main_work_horse(self, job, queue):
        _forget_parent_connections()
        return super().main_work_horse(job, queue)


def preload() -> None:
    from sqlalchemy.orm import configure_mappers

    from jobs import app
    from portal import outbound
    from portal.queue import job_modules

    app()
    for name in job_modules():  # the modules RQ imports by name in each horse (portal/queue.py JOBS)
        importlib.import_module(name)
    configure_mappers()
    outbound.preload()


def _forget_parent_connections() -> None:
    """In the horse: no pooled database connection may be shared with the worker (there should
    be none, as the worker never queries; this makes sure)."""
    from jobs import app
    from portal.extensions import db

    with app().app_context():
        for engine in db.engines.values():
            engine.dispose(close=False)
