"""Secret links sent by email (a lab's page, a set-password link), RELIABILITY.md M1.

A token is `secrets.token_urlsafe(32)` (256 bits from a secure generator); only its SHA-256 is
stored, so the database alone never opens a link. Each link model has a unique `token_hash`.
"""
from __future__ import annotations

import hashlib
import re
import secrets

from flask import current_app

from portal.extensions import db

TOKEN_BYTES = 32
TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # what token_urlsafe(32) produces


def new_token() -> tuple[str, str]:
    """(the token for the email, the hash to store)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def public_url(path: str) -> str:
    """An absolute link for an email: PUBLIC_BASE_URL plus `path`."""
    return f"{current_app.config['PUBLIC_BASE_URL'].rstrip('/')}{path}"


def find(model, token: str):
    """The row of `model` the token opens, or None for a malformed or unknown token (a malformed
    one costs no query)."""
    if not token or not TOKEN_SHAPE.match(token):
        return None
    return db.session.scalar(db.select(model).where(model.token_hash == hash_token(token)))
