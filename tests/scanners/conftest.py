"""Fixtures for the scan-file tests: a document store of each test's own, an empty RQ queue, and an
upload posted the way the page posts it (multipart, with the CSRF header)."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portal.audit.models import AuditEvent
from portal.extensions import db as _db
from portal.scanners.models import Scan, ScanFile


@pytest.fixture()
def store_dir(app, tmp_path, monkeypatch) -> Path:
    path = tmp_path / "scan-store"
    monkeypatch.setitem(app.config, "SCAN_STORE_DIR", str(path))
    return path


@pytest.fixture()
def scan_queue(app, db):
    from portal.queue import get_queue

    q = get_queue()
    _clean(q)
    yield q
    _clean(q)


def _clean(q) -> None:
    # Finished or failed jobs of earlier tests may share a deterministic id with this test's (ids
    # restart with the tables): enqueue_now replaces those, so only the waiting ones go.
    q.empty()
    for key in q.connection.scan_iter("labmanager:once:*"):
        q.connection.delete(key)


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
