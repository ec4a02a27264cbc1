"""Standard Webhooks signatures as a lab would compute them, written apart from the portal's own
code so the sandbox checks the portal rather than agreeing with it.

Signed content: "{webhook-id}.{webhook-timestamp}.{raw body}", HMAC-SHA256 keyed with the base64
bytes after `whsec_`; the header holds `v1,<base64>` for each secret, space separated.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time

TOLERANCE = 300


class BadSignature(Exception):
    pass


def _sign(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {"webhook-id": msg_id, "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + _sign(secret, msg_id, timestamp, body)}


def verify(secret: str, request_headers, body: bytes) -> None:
    msg_id = request_headers.get("webhook-id", "")
    timestamp = request_headers.get("webhook-timestamp", "")
    offered = request_headers.get("webhook-signature", "")
    if not (msg_id and timestamp and offered):
        raise BadSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE:
        raise BadSignature("webhook-timestamp is missing or more than 300 seconds away")
    expected = _sign(secret, msg_id, timestamp, body).encode()
    if not any(hmac.compare_digest(expected, part[3:].encode())
               for part in offered.split() if part.startswith("v1,")):
        raise BadSignature("no valid signature")
