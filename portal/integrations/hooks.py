"""POST /api/scanners/hooks/<key>: where scanner vendors notify us (iTero's scan callback, Medit's
webhooks).

The URL's last part is an unguessable per-integration key (only its hash is stored), so a forged
notification needs it first; then the vendor's adapter verifies what it can (Medit signs its
bodies) and names the orders to re-read. The request stores them and answers at once; a job
re-reads each order through the vendor's authenticated API (docs/reliability.md W5, W6), so a notification can
change nothing by itself. A repeated delivery is answered 2xx and stored once (docs/reliability.md W4). JSON errors
only; no CSRF token here (the key and the signature are the authentication).
"""
from __future__ import annotations

from flask import Blueprint, jsonify, make_response, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal import logfilter
from portal.extensions import csrf, db, limiter
from portal.integrations import sync
from portal.integrations.base import CallbackRejected
from portal.integrations.models import ScannerIntegration
from portal.integrations.registry import adapter_for
from portal.integrations.services import HOOKS_PATH
from portal.tokens import TOKEN_SHAPE, guesses, hash_token

bp = Blueprint("scanner_hooks", __name__, url_prefix="/api/scanners")  # /hooks/<key>: HOOKS_PATH
bp.record_once(lambda state: logfilter.install(state.app, HOOKS_PATH))
MAX_BODY = 256 * 1024


def _error(status: int, message: str):
    response = jsonify(error=message)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def _integration(key: str) -> ScannerIntegration | None:
    if not TOKEN_SHAPE.match(key):
        return None
    return db.session.scalar(select(ScannerIntegration).where(ScannerIntegration.callback_key_hash == hash_token(key)))


@bp.post("/hooks/<key>")
@csrf.exempt
@limiter.limit(lambda: "600 per minute")
@guesses  # an unknown key answers 404 and spends the address's guesses, like every token URL
def hook(key: str):
    if (request.content_length or 0) > MAX_BODY:
        return _error(413, "the body is larger than 256 KiB")
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY:
        return _error(413, "the body is larger than 256 KiB")
    integration = _integration(key)
    if integration is None:
        return _error(404, "unknown notification address")
    if not integration.active:
        return _error(409, "this integration is paused at the practice")
    try:
        notices = adapter_for(integration).verify_callback(request.headers, raw)
    except CallbackRejected as exc:
        return _error(exc.status, str(exc))
    try:
        sync.store_notices(integration, notices)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()  # the same notification arrived twice at once; the other copy is stored
    response = make_response("", 204)
    response.headers["Cache-Control"] = "no-store"
    return response
