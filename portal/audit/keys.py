"""The audit chain's keys (docs/reliability.md A3, keyed): each row's hash is an HMAC-SHA256 with a key
from the environment (`AUDIT_CHAIN_KEYS`), never stored in the database, so someone who can
write to the database cannot rewrite a row and recompute the hashes after it.

`AUDIT_CHAIN_KEYS` is a comma-separated ring: the first key signs new rows, every key verifies.
Each row records the id of the key that signed it (`key_id`: the first 12 hex digits of a
SHA-256 of the key, so the id says nothing about the key). Rotate by putting a new key first;
keep the old ones in the ring for as long as rows signed with them exist (rows are append-only,
so that is for good): `flask audit verify` names a row whose key is missing from the ring.

Rows written before the chain was keyed have an empty `key_id` and a plain SHA-256 hash
(migrations/versions/0006); see portal/audit/record.py for how verify treats them.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass

from flask import current_app

MIN_KEY_LENGTH = 32


def key_id(secret: str) -> str:
    return hashlib.sha256(b"labmanager audit key id\x00" + secret.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Ring:
    signing_id: str
    keys: dict[str, bytes]

    def sign(self, kid: str, payload: bytes) -> str:
        return hmac.new(self.keys[kid], payload, hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=8)
def parse(value: str) -> Ring:
    secrets = [k.strip() for k in (value or "").split(",") if k.strip()]
    if not secrets:
        raise RuntimeError("AUDIT_CHAIN_KEYS is empty: the audit chain needs a key to sign with")
    short = [i + 1 for i, k in enumerate(secrets) if len(k) < MIN_KEY_LENGTH]
    if short:
        raise RuntimeError(f"AUDIT_CHAIN_KEYS: key {short[0]} is shorter than {MIN_KEY_LENGTH} characters")
    keys = {key_id(k): k.encode() for k in secrets}
    return Ring(signing_id=key_id(secrets[0]), keys=keys)


def ring() -> Ring:
    return parse(current_app.config.get("AUDIT_CHAIN_KEYS", ""))
