"""POST /api/labs/<lab_id>/events: a lab's signed status events (openapi/lab-api.yaml).

Verify (signature over the raw body, fresh timestamp), check, store, commit, answer 204 (docs/reliability.md W5); a job
enqueued after the commit applies the event to the case. JSON errors only (every /api/ answer,
404, 405 and 413 included: portal/web.py).
No CSRF token here: the Standard Webhooks signature is the authentication.

A lab id that is not a lab's (unknown, out of range, not a number) answers exactly as a bad
signature does, after the same checks and one HMAC with a random secret: nobody can tell from
outside which labs exist.
"""
from __future__ import annotations

import base64
import json
import re
import secrets

from flask import Blueprint, jsonify, make_response, request
from sqlalchemy.exc import IntegrityError

from portal.dispatch import signing
from portal.extensions import csrf, transaction
from portal.labapi import services

bp = Blueprint("labapi", __name__, url_prefix="/api/labs")
MAX_BODY = 64 * 1024
LAB_ID = re.compile(r"^[1-9][0-9]{0,9}$")
MAX_ID = 2**31 - 1  # the largest id a PostgreSQL integer column holds
# Verifies against the deliveries for a lab id that is not a lab's: never matches anything.
_NO_LAB_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def lab_id_or_none(text: str) -> int | None:
    """The lab id in the path, or None when it can't be one (a lab row's id is 1 to 2**31 - 1)."""
    if not LAB_ID.match(text or ""):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def _error(status: int, message: str):
    response = jsonify(error=message)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def _no_content():
    response = make_response("", 204)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/<lab_id_text>/events")
@csrf.exempt
def events(lab_id_text: str):
    if (request.content_length or 0) > MAX_BODY:
        return _error(413, "the body is larger than 64 KiB")
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY:
        return _error(413, "the body is larger than 64 KiB")
    try:  # parsed before it is trusted only to look the event id up in the same query
        body = json.loads(raw)
    except (ValueError, RecursionError):
        body = None
    event_id = body.get("event_id") if isinstance(body, dict) else None
    msg_id = request.headers.get("webhook-id", "")
    lab_id = lab_id_or_none(lab_id_text)
    known = None
    if lab_id is not None:
        # only an event id that could have been stored is looked up (parse() refuses the rest)
        lookup = event_id if isinstance(event_id, str) and "\x00" not in event_id else None
        known = services.inbound(lab_id, msg_id[:100], lookup)
    try:
        signing.verify(known.secrets if known is not None else [_NO_LAB_SECRET], msg_id,
                       request.headers.get("webhook-timestamp", ""), request.headers.get("webhook-signature", ""),
                       raw)
    except signing.SignatureError as exc:
        return _error(401, str(exc))
    if known is None:  # unreachable: nothing verifies against the random secret
        return _error(401, "no valid signature")
    if len(msg_id) > 100:
        return _error(422, "webhook-id is longer than 100 characters")
    if known.seen_webhook:  # a delivery already handled: 2xx whatever it holds (docs/reliability.md W4)
        return _no_content()
    if body is None:
        return _error(422, "the body is not JSON")
    # An IntegrityError is the same event arriving twice at once (unique per lab): the other
    # copy was stored, so this one is answered like a repeat.
    with transaction(services.EventError, IntegrityError) as outcome:
        services.accept_event(lab_id, msg_id, body, raw, seen_event=known.seen_event)
    if isinstance(outcome.refused, services.EventError):
        return _error(422, str(outcome.refused))
    return _no_content()
