"""Fixtures of the scanner tests that talk HTTP: the vendor sandbox on loopback (iTero and Medit
Link, portal/demo/vendor_sandbox.py), the app behind a real HTTP server for the sandbox's callbacks
and webhooks, and a clean queue."""
from __future__ import annotations

import threading

import pytest
from rq.job import Job
from werkzeug.serving import make_server

from portal.demo.vendor_sandbox import Sandbox
from portal.queue import get_queue
from tests.scanners.itero_support import CLIENT_ID, CLIENT_SECRET


@pytest.fixture(scope="session")
def sandbox_server():
    server = Sandbox().start()
    yield server
    server.stop()


@pytest.fixture()
def sandbox(sandbox_server):
    sandbox_server.reset()
    sandbox_server.add_client("itero", CLIENT_ID, CLIENT_SECRET)
    yield sandbox_server
    sandbox_server.drain()
    sandbox_server.reset()


@pytest.fixture(scope="session")
def app_server(app):
    """The app behind werkzeug's server on a free loopback port: where the sandbox posts callbacks."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture()
def live(app, app_server, monkeypatch):
    """Callback URLs point at the live server."""
    monkeypatch.setitem(app.config, "PUBLIC_BASE_URL", app_server)
    return app_server


@pytest.fixture()
def queue(app, db):
    q = get_queue()
    _clean(q)
    yield q
    _clean(q)


def _clean(q) -> None:
    from rq.exceptions import NoSuchJobError

    q.empty()
    for key in q.connection.scan_iter("labmanager:once:*"):
        q.connection.delete(key)
    for registry in (q.scheduled_job_registry, q.failed_job_registry, q.finished_job_registry):
        for job_id in registry.get_job_ids():
            try:
                Job.fetch(job_id, connection=q.connection).delete()
            except (NoSuchJobError, ValueError):  # ValueError: rq lost the job's execution record
                registry.remove(job_id)

