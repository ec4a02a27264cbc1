"""Fixtures of the scanner tests that talk HTTP: the vendor sandbox on loopback (iTero and Medit
Link, sandbox/vendors.py), the app behind a real HTTP server for the sandbox's callbacks
and webhooks, and a clean queue. For the scan-file tests: a document store of each test's own, and
an upload posted the way the page posts it (multipart, with the CSRF header)."""
from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from rq.job import Job
from sqlalchemy import func, select
from werkzeug.serving import make_server

from portal.audit.models import AuditEvent
from portal.extensions import db as _db
from portal.queue import get_queue
from portal.scans.models import Scan, ScanFile
from sandbox.vendors import Sandbox
from tests.integrations.itero_support import CLIENT_ID, CLIENT_SECRET


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


@pytest.fixture()
def store_dir(app, tmp_path, monkeypatch) -> Path:
    path = tmp_path / "scan-store"
    monkeypatch.setitem(app.config, "SCAN_STORE_DIR", str(path))
    return path


@pytest.fixture()
def scan_queue(queue):
    return queue


def post_upload(client, files: dict[str, bytes] | list[tuple[str, bytes]], *, patient=None, case=None,
                htmx: bool = False, csrf: bool = True, **extra):
    """POST the upload form as a browser does. The body is encoded here, in memory: werkzeug's test
    client spools a large body to a temporary file that nobody closes (a ResourceWarning)."""
    items = files.items() if isinstance(files, dict) else files
    fields = [("files", (name, body)) for name, body in items] + list(extra.items())
    if patient is not None:
        fields.append(("patient_id", str(getattr(patient, "id", patient))))
    if case is not None:
        fields.append(("case_id", str(getattr(case, "id", case))))
    boundary, body = _multipart(fields)
    return _post(client, body, boundary, htmx, csrf)


def _multipart(fields) -> tuple[str, bytes]:
    import uuid

    boundary = f"----labmanager{uuid.uuid4().hex}"
    out = io.BytesIO()
    for name, value in fields:
        out.write(f"--{boundary}\r\n".encode())
        if isinstance(value, tuple):
            filename, body = value
            quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
            out.write(f'Content-Disposition: form-data; name="{name}"; filename="{quoted}"\r\n'.encode())
            out.write(b"Content-Type: application/octet-stream\r\n\r\n")
            out.write(body)
        else:
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return boundary, out.getvalue()


def _post(client, body: bytes, boundary: str, htmx: bool, csrf: bool):
    headers = {"X-CSRFToken": client.csrf_token()} if csrf else {}
    if htmx:
        headers["HX-Request"] = "true"
    client._fresh_g()
    return client.raw.post("/scans/upload", data=body, headers=headers,
                           content_type=f"multipart/form-data; boundary={boundary}")


def stored_files(root: Path) -> list[Path]:
    """Every file under the store (the .info sidecars included): what an upload left behind."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def counts() -> tuple[int, int, int]:
    return tuple(_db.session.scalar(select(func.count()).select_from(m)) for m in (Scan, ScanFile, AuditEvent))


@pytest.fixture(scope="session")
def opendental_server():
    from sandbox.opendental import OpenDentalSandbox

    server = OpenDentalSandbox().start()
    yield server
    server.stop()


@pytest.fixture()
def od(opendental_server):
    """The Open Dental sandbox, empty, with its demo keys accepted."""
    opendental_server.reset()
    yield opendental_server
    opendental_server.reset()
