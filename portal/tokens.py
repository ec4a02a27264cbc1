"""Secret links sent by email (a lab's page, a set-password link), docs/reliability.md M1.

A token is `secrets.token_urlsafe(32)` (256 bits from a secure generator); only its SHA-256 is
stored, so the database alone never opens a link. Each link model has a unique `token_hash`.
"""
from __future__ import annotations

import hashlib
import re
import secrets

from flask import current_app

from portal.extensions import db, limiter

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


def guess_limit() -> str:
    return current_app.config.get("TOKEN_GUESS_LIMIT", "10 per minute")


# One budget of wrong guesses per address for every public URL whose path holds a token (a lab's
# page, a scan file's link, a set-password link, a scanner's notification address): each answers
# an unknown token 404, and an address past TOKEN_GUESS_LIMIT of those gets 429 on all of them
# until the minute is over, the real links included. Guessing one kind spends the others' budget.
guesses = limiter.shared_limit(guess_limit, scope="token-guess", deduct_when=lambda response: response.status_code == 404)
