"""Schemathesis fuzzes POST /api/labs/{lab_id}/events from openapi/lab-api.yaml, in process (WSGI):
it must find no 5xx, no status code, content type, header or body the spec does not document.

A hook signs every request with the lab's real secret over the exact bytes sent, and points a
valid lab id and order id at a real lab and a real work order, so the fuzzing gets past the
signature check into the parsing, checks and storing behind it. Ids outside a lab row's range
(schemathesis tries huge integers) are kept, as is the generated webhook-id. Bounded
(max_examples) to stay well under a minute; CI runs it with the rest of the suite.
"""
from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_headers_conformance, response_schema_conformance, status_code_conformance,
)

from portal.audit.actor import Actor
from portal.dispatch import services, signing
from portal.extensions import db
from portal.labapi.routes import MAX_ID
from tests import factories
from tests.dispatch.conftest import SECRET

SPEC = Path(__file__).resolve().parents[2] / "openapi" / "lab-api.yaml"
schema = schemathesis.openapi.from_path(SPEC)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
EVENTS = "/api/labs/{lab_id}/events"
_target: dict = {}  # the real lab and work order, set by the `target` fixture for the hook


@schemathesis.hook
def before_call(ctx, case, kwargs):
    """Sign the request the way a lab does (Standard Webhooks), over the bytes that are sent."""
    if not _target or case.operation.path != EVENTS:
        return
    lab_id = case.path_parameters.get("lab_id")
    if isinstance(lab_id, int) and 0 < lab_id <= MAX_ID:
        case.path_parameters["lab_id"] = _target["lab_id"]
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("order_id"), str):
        try:
            uuid.UUID(body["order_id"])
            body["order_id"] = _target["order_id"]
        except ValueError:
            pass  # a malformed order id stays, to be refused
    if isinstance(body, (bytes, bytearray)):
        raw = bytes(body)
    elif body is None or type(body).__name__ == "NotSet":
        raw = b""
    else:
        raw = json.dumps(body).encode()
    kwargs["data"] = raw
    headers = dict(case.headers or {})
    msg_id = headers.get("webhook-id")
    if not isinstance(msg_id, str) or not msg_id:
        msg_id = f"msg_{uuid.uuid4().hex}"
    headers.update(signing.headers([SECRET], msg_id, raw, timestamp=int(time.time())))
    case.headers = headers


@pytest.fixture()
def target(world, queue):
    lab = world.labs["api"]
    case = factories.case(world, lab=lab, due=dt.date.today() + dt.timedelta(days=20))
    dispatch = services.approve_and_send(case, Actor.user(world.users["coordinator"]), confirm_risk=False)
    db.session.commit()
    _target.update(lab_id=lab.id, order_id=dispatch.id, statuses=[])
    yield _target
    statuses = _target["statuses"]
    _target.clear()
    # The signing hook works: most requests got past the signature check, and some were stored.
    print(sorted((code, statuses.count(code)) for code in set(statuses)))
    assert statuses.count(401) < len(statuses) / 2, statuses
    assert 204 in statuses and 422 in statuses, statuses


@schema.include(path=EVENTS).parametrize()
@settings(max_examples=80, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_the_lab_api_answers_only_as_documented(app, client, target, case):
    response = case.call(app=app)
    target["statuses"].append(response.status_code)
    case.validate_response(response, checks=CHECKS)
    db.session.rollback()  # the next example starts from what was committed
