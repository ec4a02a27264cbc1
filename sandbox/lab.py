"""A pretend lab with an API for the demo: `python -m sandbox.lab` (make run starts it).

Listens on 127.0.0.1:5055 (DEMO_LAB_PORT) for signed work orders (docs/lab-api.md) for the
seeded "Keystone Digital Lab", honours Idempotency-Key, and over the following minutes posts
signed status events back to the order's callback_url: acknowledged, in_production, dispatched
with a tracking number. DEMO_LAB_STEP_SECONDS (default 20) sets the pace. It talks to loopback
addresses only and gives up on an event after a few tries.

It also takes the practice's order events (`POST /orders/{order_id}/events`: cancelled, due date
or prescription changed, a message), answers 204 and logs them; a repeated webhook-id is answered
204 and ignored. A cancelled order stops: its remaining status events are dropped, and later
events for it are answered 410.
"""
from __future__ import annotations

import datetime as dt
import heapq
import itertools
import json
import logging
import os
import random
import threading
import time
import uuid

import httpx
from werkzeug.wrappers import Request, Response

from sandbox import webhooks
from sandbox.server import HOST, ApiError, Routes, Server, is_loopback, json_response, serve_until_stopped

SECRET = os.environ.get("DEMO_LAB_SECRET", "whsec_ZGVtby1sYWItc2VjcmV0LWZvci1rZXlzdG9uZS0wMDE=")
PORT = int(os.environ.get("DEMO_LAB_PORT", "5055"))
STEP = float(os.environ.get("DEMO_LAB_STEP_SECONDS", "20"))
MAX_TRIES = 5
log = logging.getLogger("demo-lab")


class Lab:
    """Orders by Idempotency-Key, and a timeline of events to post."""

    def __init__(self, step: float = STEP):
        self.step = step
        self.orders: dict[str, dict] = {}
        self.cancelled: set[str] = set()  # order ids the practice cancelled
        self.seen_events: set[str] = set()  # webhook-ids of order events taken
        self.lock = threading.Lock()
        self.refs = itertools.count(1001)
        self.plan: list[tuple[float, int, dict]] = []  # (when, seq, job) heap
        self.seq = itertools.count()
        self.wakeup = threading.Condition(self.lock)
        self.stopping = False
        self.client = httpx.Client(timeout=httpx.Timeout(5.0))

    def take_order(self, key: str, raw: bytes) -> tuple[int, dict]:
        with self.lock:
            known = self.orders.get(key)
            if known is not None:
                return (200, {"lab_reference": known["reference"]}) if known["raw"] == raw else \
                    (409, {"error": "this Idempotency-Key was used with another body"})
            body = json.loads(raw)
            reference = f"KS-{next(self.refs)}"
            self.orders[key] = {"raw": raw, "reference": reference}
        log.info("order %s for case %s accepted as %s", body["order_id"], body["case_number"], reference)
        self._plan_events(body)
        return 201, {"lab_reference": reference}

    def take_event(self, order_id: str, msg_id: str, raw: bytes) -> tuple[int, dict | None]:
        """An order event from the practice: logged; a cancellation stops the order's timeline."""
        event = json.loads(raw)
        with self.lock:
            if order_id not in self.orders:
                return 404, {"error": f"no order {order_id}"}
            if msg_id in self.seen_events:
                return 204, None
            if order_id in self.cancelled:
                return 410, {"error": "this order was cancelled"}
            self.seen_events.add(msg_id)
            if event["type"] == "cancelled":
                self.cancelled.add(order_id)
                self.plan = [p for p in self.plan if p[2]["event"]["order_id"] != order_id]
                heapq.heapify(self.plan)
        log.info("%s for %s: %s", event["type"], event.get("case_number", order_id), _describe(event))
        return 204, None

    def _plan_events(self, order: dict) -> None:
        callback = order.get("callback_url", "")
        if not is_loopback(callback):
            log.warning("not calling back %s: the demo lab only talks to loopback addresses", callback)
            return
        eta = (dt.date.today() + dt.timedelta(days=2)).isoformat()
        steps = [
            ("acknowledged", {}),
            ("in_production", {"eta": eta}),
            ("dispatched", {"carrier": "UPS", "tracking_number": f"1Z{random.randint(10**9, 10**10 - 1)}",
                            "eta": eta}),
        ]
        now = time.time()
        with self.lock:
            for n, (kind, data) in enumerate(steps, start=1):
                event = {"event_id": f"evt_{uuid.uuid4().hex}", "order_id": order["order_id"],
                         "case_number": order["case_number"], "type": kind, "data": data}
                job = {"url": callback, "event": event, "msg_id": f"msg_{uuid.uuid4().hex}", "tries": 0,
                       "at": now + n * self.step}
                heapq.heappush(self.plan, (job["at"], next(self.seq), job))
            self.wakeup.notify()

    def run_plan(self) -> None:
        """Post planned events when due; retry a few times with backoff, then give up."""
        while True:
            with self.lock:
                while not self.stopping and (not self.plan or self.plan[0][0] > time.time()):
                    self.wakeup.wait(timeout=(self.plan[0][0] - time.time()) if self.plan else None)
                if self.stopping:
                    return
                _, _, job = heapq.heappop(self.plan)
            self._post(job)

    def _post(self, job: dict) -> None:
        event = dict(job["event"], occurred_at=dt.datetime.fromtimestamp(job["at"], dt.UTC)
                     .strftime("%Y-%m-%dT%H:%M:%SZ"))
        raw = json.dumps(event).encode()
        job["tries"] += 1
        try:
            response = self.client.post(job["url"], content=raw, headers={
                "Content-Type": "application/json", **webhooks.headers(SECRET, job["msg_id"], raw)})
            status = response.status_code
        except httpx.TransportError as exc:
            status, response = None, exc
        if status is not None and (status < 300 or (400 <= status < 500 and status not in (408, 429))):
            log.info("%s for %s -> %s %s", event["type"], event["case_number"], status,
                     "" if status < 300 else response.text[:200])
            return
        if job["tries"] >= MAX_TRIES:
            log.warning("giving up on %s for %s after %s tries", event["type"], event["case_number"], job["tries"])
            return
        delay = 2 ** job["tries"]
        log.info("%s for %s failed (%s); again in %ss", event["type"], event["case_number"], status or response,
                 delay)
        with self.lock:
            heapq.heappush(self.plan, (time.time() + delay, next(self.seq), job))
            self.wakeup.notify()

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.wakeup.notify()


def _describe(event: dict) -> str:
    """One log line's worth of what the practice said."""
    data, kind = event.get("data") or {}, event["type"]
    if kind == "cancelled":
        return f"stopping work ({data.get('reason', '')})"
    if kind == "due_date_changed":
        return f"now due {data.get('due_date')} (was {data.get('previous')})"
    if kind == "prescription_changed":
        return f"{len(data.get('items', []))} item(s) now"
    if kind == "message":
        return f"{data.get('author', '')} wrote: {str(data.get('text', ''))[:200]}"
    return ""


def app(lab: Lab) -> Routes:
    """POST /orders (a work order) and POST /orders/{order_id}/events (the practice's order events)."""

    def signed(request: Request) -> bytes:
        raw = request.get_data()
        try:
            webhooks.verify(SECRET, request.headers, raw)
        except webhooks.BadSignature as exc:
            raise ApiError(401, str(exc)) from None
        return raw

    def orders(request: Request) -> Response:
        raw = signed(request)
        key = request.headers.get("Idempotency-Key", "")
        if not key:
            raise ApiError(400, "Idempotency-Key is required")
        try:
            return json_response(*reversed(lab.take_order(key, raw)))
        except (ValueError, KeyError) as exc:
            raise ApiError(400, f"not a work order: {exc}") from None

    def events(request: Request, order_id: str) -> Response:
        raw = signed(request)
        try:
            status, body = lab.take_event(order_id, request.headers["webhook-id"], raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(400, f"not an order event: {exc}") from None
        return json_response(body, status)

    return Routes([("/orders", "POST", "orders", orders), ("/orders/", "POST", "orders_slash", orders),
                   ("/orders/<order_id>/events", "POST", "events", events)])


def make_server(lab: Lab, host: str = HOST, port: int = PORT) -> Server:
    return Server(app(lab), host, port, name="demo-lab")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="demo-lab: %(message)s")
    lab = Lab()
    server = make_server(lab).start()
    threading.Thread(target=lab.run_plan, daemon=True).start()
    log.info("Keystone Digital Lab's API listening on %s/orders (events every %ss)", server.url, STEP)
    serve_until_stopped(lab.stop, server.stop)


if __name__ == "__main__":
    main()
