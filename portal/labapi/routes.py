"""POST /api/labs/<lab_id>/events: a lab's signed status events (openapi/lab-api.yaml).

Verify (signature over the raw body, fresh timestamp), check, store, commit, answer 204 (W5); a job
enqueued after the commit applies the event to the case. JSON errors only.
No CSRF token here: the Standard Webhooks signature is the authentication.
"""
from __future__ import annotations

import json

from flask import Blueprint, jsonify, make_response, request
from sqlalchemy.exc import IntegrityError

from portal.dispatch import signing
from portal.extensions import csrf, transaction
from portal.labapi import services

bp = Blueprint("labapi", __name__, url_prefix="/api/labs")
MAX_BODY = 64 * 1024


def _error(status: int, message: str):
    response = jsonify(error=message)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def _no_content():
    response = make_response("", 204)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/<int:lab_id>/events")
@csrf.exempt
def events(lab_id: int):
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
    known = services.inbound(lab_id, msg_id[:100], event_id if isinstance(event_id, str) else None)
    if known is None:
        return _error(404, "unknown lab")
    try:
        signing.verify(known.secrets, msg_id, request.headers.get("webhook-timestamp", ""),
                       request.headers.get("webhook-signature", ""), raw)
    except signing.SignatureError as exc:
        return _error(401, str(exc))
    if len(msg_id) > 100:
        return _error(422, "webhook-id is longer than 100 characters")
    if known.seen_webhook:  # a delivery already handled: 2xx whatever it holds (W4)
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
