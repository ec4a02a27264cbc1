"""Secrets encrypted at rest: scanner credentials and tokens (PRODUCT 4: "its credentials
(encrypted at rest)") and the labs' webhook signing secrets (the `Encrypted` column type).

Fernet (AES-128-CBC with HMAC-SHA256, from `cryptography`) keyed by SCANNER_CREDENTIALS_KEYS: a
comma-separated list of Fernet keys, the first one encrypting, every one decrypting, so a key can
be rotated (add the new key first, run `flask scanners rotate-keys`, which re-encrypts the scanner
credentials and the lab signing secrets, then drop the old one).
Development generates a key into instance/ the way it does the session secret; production must set
it. What is stored is `gAAAA...` text; a row read with none of the keys raises CredentialsError.
"""
from __future__ import annotations

import functools
import json

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app
from sqlalchemy import String
from sqlalchemy.types import TypeDecorator


class CredentialsError(RuntimeError):
    """Stored credentials that cannot be read (a key is missing) or a key that is not set."""


def _fernet() -> MultiFernet:
    return _ring(current_app.config.get("SCANNER_CREDENTIALS_KEYS") or "")


@functools.lru_cache(maxsize=8)
def _ring(setting: str) -> MultiFernet:
    keys = [k.strip() for k in setting.split(",") if k.strip()]
    if not keys:
        raise CredentialsError("SCANNER_CREDENTIALS_KEYS is not set: scanner credentials can't be stored.")
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except ValueError as exc:
        raise CredentialsError("SCANNER_CREDENTIALS_KEYS holds a key that is not a Fernet key.") from exc


def seal(data: dict) -> str:
    """Encrypt a JSON-able dict; an empty dict is stored as ""."""
    if not data:
        return ""
    return _fernet().encrypt(json.dumps(data, sort_keys=True).encode()).decode()


def unseal(text: str) -> dict:
    if not text:
        return {}
    try:
        return json.loads(_fernet().decrypt(text.encode()))
    except InvalidToken as exc:
        raise CredentialsError("These credentials were encrypted with a key that is no longer configured "
                               "(SCANNER_CREDENTIALS_KEYS); enter them again.") from exc


def rotate(text: str) -> str:
    """Re-encrypt with the first key (after a new key was put first)."""
    return _fernet().rotate(text.encode()).decode() if text else ""


def new_key() -> str:
    return Fernet.generate_key().decode()


FERNET_PREFIX = "gAAAAA"  # every Fernet token starts so (version byte 0x80, then the timestamp)


def encrypt_text(text: str) -> str:
    return _fernet().encrypt(text.encode()).decode()


def decrypt_text(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise CredentialsError("A secret was encrypted with a key that is no longer configured "
                               "(SCANNER_CREDENTIALS_KEYS).") from exc


class Encrypted(TypeDecorator):
    """A text column stored as a Fernet token and read back as the text: the database (and a copy
    of it) holds only ciphertext; the application reads and writes plain strings."""

    impl = String(500)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else encrypt_text(value)

    def process_result_value(self, value, dialect):
        return None if value is None else decrypt_text(value)
