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

**Its scheduler.** `--with-scheduler` forks RQ's scheduler (what moves retries due now onto the
queue) beside the worker. When Redis goes away for a few seconds the scheduler process dies, and
plain RQ only looks at it again at its next maintenance, ten minutes on, while the worker goes on
taking jobs as if nothing were wrong. Here a watchdog thread looks every `SCHEDULER_CHECK_SECONDS`:
if the scheduler this worker started has died, the worker stops as on SIGTERM (a job under way
finishes first) and exits with status 1, so its supervisor (systemd `Restart=always`, `make run`)
starts a fresh one with a fresh scheduler. The outbox sweep also enqueues any retry overdue by
more than OUTBOX_GRACE_SECONDS whatever Redis says (portal/queue.py), so nothing waits on a
scheduler that is gone.
"""
from __future__ import annotations

import importlib
import os
import signal
import threading

import rq

SCHEDULER_CHECK_SECONDS = 2.0
EXIT_SCHEDULER_DIED = 1


class Worker(rq.Worker):
    scheduler_lost = False
    stopping = False

    def work(self, *args, **kwargs):
        preload()  # here rather than in __init__: `rq info` builds Worker objects too
        watching = threading.Event()
        if kwargs.get("with_scheduler") and not kwargs.get("burst"):
            threading.Thread(target=self._watch_scheduler, args=(watching,), name="scheduler-watchdog",
                             daemon=True).start()
        try:
            result = super().work(*args, **kwargs)
        finally:
            watching.set()
        if self.scheduler_lost:
            try:  # let the next worker's scheduler take the lock now rather than when it lapses
                self.scheduler.release_locks()
            except Exception:  # noqa: BLE001 - Redis may still be away; the lock then lapses by itself
                pass
            self.log.error("Worker %s: its scheduler died; exiting with status %s so that it is restarted",
                           self.name, EXIT_SCHEDULER_DIED)
            raise SystemExit(EXIT_SCHEDULER_DIED)
        return result

    def _watch_scheduler(self, done: threading.Event) -> None:
        """In a thread: stop the worker (as SIGTERM does) once the scheduler process it started is dead."""
        while not done.wait(SCHEDULER_CHECK_SECONDS):
            scheduler = self.scheduler
            process = scheduler._process if scheduler is not None else None
            if self.stopping:
                return  # a shutdown stops the scheduler too
            if process is None:
                continue  # another worker holds the scheduler lock
            if not process.is_alive():
                self.scheduler_lost = True
                self.log.error("Worker %s: its scheduler (pid %s) died with status %s", self.name, process.pid,
                               process.exitcode)
                os.kill(os.getpid(), signal.SIGTERM)  # the main thread's warm shutdown
                return

    def handle_warm_shutdown_request(self):
        self.stopping = True
        super().handle_warm_shutdown_request()

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
