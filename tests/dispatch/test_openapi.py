"""openapi/lab-api.yaml describes what really goes over the wire, both ways (openapi-core)."""
import datetime as dt
import json
import uuid
from pathlib import Path

import pytest
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.datatypes import RequestParameters
from openapi_core.exceptions import OpenAPIError
from werkzeug.datastructures import Headers, ImmutableMultiDict
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from portal.audit.actor import Actor
from portal.cases.services import CaseData, ItemData, move_case, update_case
from portal.dispatch import signing
from portal.dispatch.models import Dispatch
from portal.extensions import db
from portal.messages.services import send_to_lab
from tests.dispatch.conftest import SECRET, drain
from tests.dispatch.labstub import EVENTS_PATH
from tests.dispatch.test_delivery import _send
from tests.dispatch.test_webhook import _event

SPEC = OpenAPI.from_file_path(str(Path(__file__).resolve().parents[2] / "openapi" / "lab-api.yaml"))


class WorkOrderRequest:
    """The work order as the lab received it, in openapi-core's WebhookRequest shape."""

    name = "workOrder"
    method = "post"

    def __init__(self, captured: dict, path: dict | None = None):
        self.parameters = RequestParameters(header=Headers(captured["headers"]), query=ImmutableMultiDict(),
                                            cookie=ImmutableMultiDict(), path=path or {})
        self.body = captured["raw"]
        self.content_type = captured["headers"]["content-type"]


class OrderEventRequest(WorkOrderRequest):
    """An order event as the lab received it; the order id comes from the path it was posted to."""

    name = "orderEvent"

    def __init__(self, captured: dict):
        match = EVENTS_PATH.match(captured["path"])
        assert match, f"an order event went to {captured['path']}"
        super().__init__(captured, path={"order_id": match["order_id"]})


class LabResponse:
    def __init__(self, answer: dict):
        self.status_code = answer["status"]
        self.data = answer["data"]
        self.content_type = "application/json" if answer["data"] else ""
        self.headers = Headers({**({"Content-Type": self.content_type} if answer["data"] else {}), **answer["headers"]})


def test_the_work_order_the_job_sends_matches_the_spec(world, api_lab, stub, queue):
    stub.script = [503, 201]
    _send(world, api_lab)
    drain(queue)
    assert len(stub.requests) == 2
    for captured, answer in zip(stub.requests, stub.responses):
        request = WorkOrderRequest(captured)
        SPEC.validate_request(request)
        SPEC.validate_response(request, LabResponse(answer))


def test_the_order_events_the_job_sends_match_the_spec(world, api_lab, stub, queue):
    """Each kind of event, as our code really sends it, and the lab's answers (a retried 503, a
    final 404, 204s) are what openapi/lab-api.yaml says."""
    dispatch = _send(world, api_lab)
    drain(queue)
    case, actor = db.session.get(Dispatch, dispatch.id).case, Actor.user(world.users["coordinator"])
    stub.script = [503, 204, 404]
    send_to_lab(case, "Is the shade photo clear?", actor)
    update_case(case, CaseData(
        patient_id=case.patient_id, provider_id=case.provider_id, lab_id=case.lab_id,
        due_date=case.due_date + dt.timedelta(days=2), instructions="Polish only, no glaze",
        items=[ItemData(teeth=["11", "12"], restoration="bridge", material="zirconia", shade="A2",
                        margin="chamfer")]), actor)
    move_case(case, "cancelled", actor, reason="Patient chose an implant")
    db.session.commit()
    drain(queue)
    sent = [(r, a) for r, a in zip(stub.requests, stub.responses) if r["path"] != "/orders"]
    assert [json.loads(r["raw"])["type"] for r, _ in sent] == [
        "message", "message", "due_date_changed", "prescription_changed", "cancelled"]
    assert [a["status"] for _, a in sent] == [503, 204, 404, 204, 204]
    for captured, answer in sent:
        request = OrderEventRequest(captured)
        SPEC.validate_request(request)
        SPEC.validate_response(request, LabResponse(answer))
    # The spec does constrain the body: an event without what its type needs is refused.
    broken = dict(sent[-1][0], raw=json.dumps({**json.loads(sent[-1][0]["raw"]), "data": {}}).encode())
    with pytest.raises(OpenAPIError):
        SPEC.validate_request(OrderEventRequest(broken))


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
    expected = {"applied": 204, "bad-signature": 401, "unknown-lab": 401, "unknown-order": 422, "repeat": 204}
    assert response.status_code == expected[case_kind]
    openapi_request = WerkzeugOpenAPIRequest(request)
    if expect_valid_request:
        SPEC.validate_request(openapi_request)
    SPEC.validate_response(openapi_request, WerkzeugOpenAPIResponse(response))
    db.session.expire_all()
    assert db.session.get(Dispatch, dispatch.id) is not None
