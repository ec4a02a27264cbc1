"""Standard Webhooks signing, both directions (docs/lab-api.md "Signing").

The signed content is "{webhook-id}.{webhook-timestamp}.{raw body}", HMAC-SHA256 keyed with the
decoded bytes of a `whsec_<base64>` secret; the header holds `v1,<base64 signature>` for every
active secret, space separated (several during a rotation).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable

TOLERANCE_SECONDS = 300
PREFIX = "whsec_"


class SignatureError(Exception):
    """The delivery is not authentic or not fresh; str(exc) says which, for the JSON error."""


def secret_key(secret: str) -> bytes:
    body = secret[len(PREFIX):] if secret.startswith(PREFIX) else secret
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a signing secret must be whsec_ followed by base64") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets)


def headers(secrets: Iterable[str], msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header(secrets, msg_id, ts, body),
    }


def verify(secrets: Iterable[str], msg_id: str, timestamp: str, signature: str, body: bytes,
           now: float | None = None) -> None:
    """Raise SignatureError unless one `v1` signature matches one secret and the time is fresh."""
    if not msg_id or not timestamp or not signature:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        ts = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not a unix time") from None
    now = time.time() if now is None else now
    if abs(now - ts) > TOLERANCE_SECONDS:
        raise SignatureError("webhook-timestamp is more than 300 seconds away")
    offered = [part.split(",", 1)[1] for part in signature.split() if part.startswith("v1,")]
    matched = False
    for secret in secrets:
        expected = sign(secret, msg_id, ts, body).split(",", 1)[1]
        for candidate in offered:
            # Every comparison runs; compare_digest keeps each one constant-time.
            matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    if not matched:
        raise SignatureError("no valid signature")
