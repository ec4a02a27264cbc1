"""Download links for scan files kept in the document store, for labs (docs/lab-api.md `scans`).

An uploaded or exported file has no vendor URL, so the work order and the email lab's page carry a
signed link to Lab Manager instead: ``/scan-files/<token>``. The token is an itsdangerous
signature (the app's SECRET_KEY, its own salt) over the file's id and a digest of its store path,
with the time it was made; it is good for LAB_LINK_TTL_DAYS, the life of a lab's private link.
Nothing is stored: the work order's payload is frozen when approved, and the link in it works until
it expires (or SECRET_KEY changes). A tampered, truncated or forged token is "unknown"; an old one
"expired".
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from portal import tokens
from portal.extensions import db
from portal.scans import store
from portal.scans.models import ScanFile

SALT = "labmanager.scan-file-link/1"
PATH = "/scan-files/"


@dataclass(frozen=True)
class Lookup:
    file: ScanFile | None
    problem: str  # "", "unknown", "expired", "gone" (the stored copy is missing)


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=SALT)


def ttl_seconds() -> int:
    return int(current_app.config.get("LAB_LINK_TTL_DAYS", 30)) * 86400


def _digest(ref: str) -> str:
    return hashlib.sha256(ref.encode()).hexdigest()[:16]


def token_for(f: ScanFile) -> str:
    return _serializer().dumps([f.id, _digest(f.ref)])


def file_url(f: ScanFile) -> str:
    """The absolute download link of a stored file (PUBLIC_BASE_URL), or "" for a vendor's file."""
    if not store.is_store_ref(f.ref):
        return ""
    return tokens.public_url(PATH + token_for(f))


def resolve(token: str) -> Lookup:
    if not token or len(token) > 200:
        return Lookup(None, "unknown")
    try:
        file_id, digest = _serializer().loads(token, max_age=ttl_seconds())
    except SignatureExpired:
        return Lookup(None, "expired")
    except (BadSignature, ValueError, TypeError):
        return Lookup(None, "unknown")
    row = db.session.get(ScanFile, file_id) if isinstance(file_id, int) else None
    if row is None or not isinstance(digest, str) or digest != _digest(row.ref):
        return Lookup(None, "unknown")
    path = store.resolve(row.ref)
    if path is None or not path.is_file():
        return Lookup(row, "gone")
    return Lookup(row, "")
