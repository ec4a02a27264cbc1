"""Helpers for the people tests: the sample Open Dental exports and an upload helper."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def sample(name: str) -> bytes:
    return (DATA / f"opendental_{name}.csv").read_bytes()


def multipart(fields: dict[str, str], filename: str | None, content: bytes) -> tuple[bytes, str]:
    """A multipart body built in memory (Werkzeug's builder spools big bodies to a temp file it
    never closes, which pytest reports as an unraisable ResourceWarning)."""
    boundary = "----labmanager-test-boundary"
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    if filename is not None:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                  f"Content-Type: text/csv\r\n\r\n".encode())
        out.write(content + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture()
def upload(client):
    """POST a file to the import page: upload("patients", b"...", htmx="import-panel")."""

    def _upload(kind: str, content: bytes, filename: str | None = "export.csv", htmx=False, csrf=True):
        body, content_type = multipart({"kind": kind}, filename, content)
        headers = {"X-CSRFToken": client.csrf_token()} if csrf else {}
        if htmx:
            headers.update({"HX-Request": "true", "HX-Target": htmx})
        client._fresh_g()
        return client.raw.post("/people/import", data=body, headers=headers, content_type=content_type)

    return _upload
