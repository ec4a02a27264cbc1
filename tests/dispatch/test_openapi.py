"""openapi/lab-api.yaml describes what really goes over the wire, both ways (openapi-core)."""
import json
import uuid
from pathlib import Path

import pytest
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from portal.dispatch import signing
from portal.dispatch.models import Dispatch
from portal.extensions import db
from tests.dispatch.conftest import SECRET, drain
from tests.dispatch.test_delivery import _send
from tests.dispatch.test_webhook import _event

SPEC = OpenAPI.from_file_path(str(Path(__file__).resolve().parents[2] / "openapi" / "lab-api.yaml"))


class WorkOrderRequest:
    """The work order as the lab received it, in openapi-core's WebhookRequest shape."""

    name = "workOrder"
    method = "post"

    def __init__(self, captured: dict):
        self.parameters = RequestParameters(header=Headers(captured["headers"]), query=ImmutableMultiDict(),
                                            cookie=ImmutableMultiDict())
        self.body = captured["raw"]
        self.content_type = captured["headers"]["content-type"]


class LabResponse:
    def __init__(self, answer: dict):
        self.status_code = answer["status"]
        self.data = answer["data"]
        self.headers = Headers({"Content-Type": "application/json", **answer["headers"]})
        self.content_type = "application/json"


def test_the_work_order_the_job_sends_matches_the_spec(world, api_lab, stub, queue):
    stub.script = [503, 201]
    _send(world, api_lab)
    drain(queue)
    assert len(stub.requests) == 2
    for captured, answer in zip(stub.requests, stub.responses):
        request = WorkOrderRequest(captured)
        SPEC.validate_request(request)
        SPEC.validate_response(request, LabResponse(answer))


def _signed(lab_id: int, body, secret=SECRET) -> dict:
    """Keyword arguments for one real request (EnvironBuilder, and the test client's open)."""
    raw = json.dumps(body).encode()
    return {"method": "POST", "path": f"/api/labs/{lab_id}/events", "base_url": "http://localhost",
            "data": raw, "headers": signing.headers([secret], f"msg_{uuid.uuid4().hex}", raw),
            "content_type": "application/json"}


@pytest.mark.parametrize("case_kind", ["applied", "bad-signature", "unknown-lab", "unknown-order", "repeat"])
def test_the_events_endpoint_answers_as_the_spec_says(app, client, world, queue, case_kind):
    lab = world.labs["api"]
    dispatch = _send(world, lab)
    queue.empty()
    body = _event(dispatch, "dispatched", {"carrier": "UPS", "tracking_number": "1Z", "eta": "2030-01-02"})
    lab_id, expect_valid_request = lab.id, True
    if case_kind == "bad-signature":
        builder = _signed(lab_id, body, secret="whsec_" + "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA==")
    elif case_kind == "unknown-lab":
        builder = _signed(lab_id + 1000, body)
    elif case_kind == "unknown-order":
        body["order_id"] = str(uuid.uuid4())
        builder = _signed(lab_id, body)
    else:
        builder = _signed(lab_id, body)
    if case_kind == "repeat":
        assert client.raw.open(**builder).status_code == 204
        builder = _signed(lab_id, body)
    request = Request(EnvironBuilder(**builder).get_environ())
    response = client.raw.open(**builder)
    expected = {"applied": 204, "bad-signature": 401, "unknown-lab": 404, "unknown-order": 422, "repeat": 204}
    assert response.status_code == expected[case_kind]
    openapi_request = WerkzeugOpenAPIRequest(request)
    if expect_valid_request:
        SPEC.validate_request(openapi_request)
    SPEC.validate_response(openapi_request, WerkzeugOpenAPIResponse(response))
    db.session.expire_all()
    assert db.session.get(Dispatch, dispatch.id) is not None
