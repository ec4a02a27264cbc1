"""The demo lab (sandbox/lab.py) takes a real signed work order and reports back,
and what it posts is accepted by our events endpoint: the whole loop make run shows. It also takes
the practice's order events, and stops work on a cancelled order."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy import select

from portal.audit.actor import Actor
from portal.cases.lifecycle import Status
from portal.dispatch import services
from portal.extensions import db
from sandbox import lab as lab_server
from tests import factories
from tests.dispatch.test_delivery import _due


def test_demo_lab_loop(client, world, queue, monkeypatch):
    monkeypatch.setattr(lab_server, "SECRET", "whsec_dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ=")
    received: list[tuple[dict, bytes]] = []

    class Callback(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, raw))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    sink = ThreadingHTTPServer(("127.0.0.1", 0), Callback)
    threading.Thread(target=sink.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    lab = lab_server.Lab(step=0.05)
    server = lab_server.make_server(lab, port=0).start()
    threading.Thread(target=lab.run_plan, daemon=True).start()
    try:
        api = world.labs["api"]
        api.api_url = server.url
        case = factories.case(world, lab=api, due=_due())
        dispatch = services.approve_and_send(case, Actor.user(world.users["coordinator"]), confirm_risk=False)
        # The callback goes to our sink; the test then plays what arrived into the real endpoint.
        payload = json.loads(dispatch.payload)
        payload["callback_url"] = f"http://127.0.0.1:{sink.server_address[1]}/api/labs/{api.id}/events"
        dispatch.payload = json.dumps(payload)
        db.session.commit()
        from tests.dispatch.conftest import drain

        drain(queue)
        db.session.refresh(dispatch)
        assert dispatch.state.value == "delivered" and dispatch.lab_reference.startswith("KS-")
        deadline = time.monotonic() + 10
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [json.loads(raw)["type"] for _, raw in received] == ["acknowledged", "in_production", "dispatched"]
        for headers, raw in received:
            response = client.raw.post(f"/api/labs/{api.id}/events", data=raw, content_type="application/json",
                                       headers={k: headers[k] for k in ("webhook-id", "webhook-timestamp",
                                                                       "webhook-signature")})
            assert response.status_code == 204, response.get_json()
        drain(queue)  # the worker applies the stored events, as under make run
        db.session.expire_all()
        assert case.status is Status.DISPATCHED and case.tracking_number.startswith("1Z")
    finally:
        lab.stop()
        server.stop()
        sink.shutdown()
        sink.server_close()


def test_demo_lab_only_calls_back_to_loopback():
    assert lab_server.is_loopback("http://127.0.0.1:5000/api/labs/1/events")
    assert lab_server.is_loopback("http://localhost:5000/x")
    assert not lab_server.is_loopback("https://example.com/api/labs/1/events")
    assert not lab_server.is_loopback("http://10.0.0.5/x")


def test_demo_lab_takes_order_events_and_stops_a_cancelled_order(world, queue, monkeypatch, caplog):
    import httpx

    from portal.cases.services import move_case
    from portal.dispatch import signing
    from portal.dispatch.models import OrderNotice
    from tests.dispatch.conftest import SECRET, drain

    monkeypatch.setattr(lab_server, "SECRET", SECRET)
    lab = lab_server.Lab(step=600)  # its status events stay planned for the whole test
    server = lab_server.make_server(lab, port=0).start()
    base = server.url
    try:
        api = world.labs["api"]
        api.api_url = base
        case = factories.case(world, lab=api, due=_due())
        actor = Actor.user(world.users["coordinator"])
        dispatch = services.approve_and_send(case, actor, confirm_risk=False)
        payload = json.loads(dispatch.payload)
        payload["callback_url"] = "http://127.0.0.1:9/api/labs/1/events"  # loopback, never reached
        dispatch.payload = json.dumps(payload)
        db.session.commit()
        drain(queue)
        assert [job["event"]["type"] for _, _, job in lab.plan] == ["acknowledged", "in_production", "dispatched"]
        with caplog.at_level("INFO", logger="demo-lab"):
            move_case(case, "cancelled", actor, reason="Patient moved away")
            db.session.commit()
            drain(queue)
        notice = db.session.scalars(select(OrderNotice)).one()
        assert notice.state.value == "delivered" and notice.last_status_code == 204
        assert "cancelled for " + case.number in caplog.text and "Patient moved away" in caplog.text
        assert lab.plan == []  # the demo lab stops making a cancelled case

        def post(order_id: str, msg_id: str, body: dict) -> httpx.Response:
            raw = json.dumps(body).encode()
            return httpx.post(f"{base}/orders/{order_id}/events", content=raw,
                              headers={"Content-Type": "application/json",
                                       **signing.headers([SECRET], msg_id, raw)})

        event = json.loads(notice.payload)
        assert post(dispatch.id, notice.webhook_id, event).status_code == 204  # a repeat: no effect
        message = dict(event, type="message", event_id="e2", data={"text": "hi", "author": "x"})
        assert post(dispatch.id, "msg_later", message).status_code == 410  # the order is closed
        assert post("no-such-order", "msg_other", message).status_code == 404
        raw = json.dumps(message).encode()
        forged = httpx.post(f"{base}/orders/{dispatch.id}/events", content=raw,
                            headers=signing.headers(["whsec_b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA=="], "m", raw))
        assert forged.status_code == 401
    finally:
        lab.stop()
        server.stop()
