"""A lab's API for tests and the bench: a real HTTP server on 127.0.0.1 that takes work orders
and the order events that follow them.

It checks the Standard Webhooks signature, honours Idempotency-Key (the same key and body give
back the same order; the same key with another body is 409), can be scripted to answer
500, 500, 201 or 400 (optionally storing the order before a 500), and can hang on a request.
Order events (`POST /orders/{order_id}/events`) are recorded once per `webhook-id` (a repeat is
answered 204 and not recorded again), answered 404 for an order it does not have, and follow the
same script (2xx answers default to 204).
"""
from __future__ import annotations

import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from portal.dispatch import signing

EVENTS_PATH = re.compile(r"^/orders/(?P<order_id>[^/]+)/events$")


class LabStub:
    def __init__(self, secrets: list[str] | None = None, verify: bool = True):
        self.secrets = list(secrets or [])
        self.verify = verify
        self.orders: dict[str, dict] = {}  # Idempotency-Key -> {"body", "raw", "reference"}
        self.events: list[dict] = []  # order events taken, in order, once per webhook-id
        self.requests: list[dict] = []  # every request, in order
        self.responses: list[dict] = []  # every answer, in order
        self.script: list[int | tuple[int, str]] = []  # answers to give next; then 201
        self.hang_next = 0  # how many requests to hold until `release` is set
        self.hang_after = 0  # ...after answering this many first
        self.in_flight = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self._refs = itertools.count(1)
        self.server: ThreadingHTTPServer | None = None

    # --- lifecycle ---
    def start(self) -> LabStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                stub._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    # --- the lab's behaviour ---
    def _answer(self, handler, status: int, body: dict | None = None, headers: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        with self.lock:
            self.responses.append({"status": status, "data": data, "headers": dict(headers or {})})
        handler.send_response(status)
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        if data:
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _handle(self, handler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in handler.headers.items()}
        event_path = EVENTS_PATH.match(handler.path)
        if handler.path != "/orders" and event_path is None:
            return self._answer(handler, 404, {"error": "not found"})
        if self.verify:
            try:
                signing.verify(self.secrets, headers.get("webhook-id", ""), headers.get("webhook-timestamp", ""),
                               headers.get("webhook-signature", ""), raw)
            except signing.SignatureError as exc:
                return self._answer(handler, 401, {"error": str(exc)})
        with self.lock:
            self.requests.append({"headers": headers, "raw": raw, "path": handler.path})
            step = self.script.pop(0) if self.script else (204 if event_path else 201)
            hang = self.hang_next > 0 and self.hang_after == 0
            if hang:
                self.hang_next -= 1
            elif self.hang_next:
                self.hang_after -= 1
        status, mode = step if isinstance(step, tuple) else (step, "")
        if event_path is not None:
            return self._event(handler, event_path["order_id"], headers, raw, status, mode, hang)
        key = headers.get("idempotency-key", "")
        if 200 <= status < 300 or mode == "store":
            result = self._store(key, raw)
            if result is None:
                return self._answer(handler, 409, {"error": "this Idempotency-Key was used with another body"})
        if hang:
            self.in_flight.set()
            self.release.wait(30)
        if 200 <= status < 300:
            fresh, order = result
            return self._answer(handler, 201 if fresh else 200, {"lab_reference": order["reference"]})
        extra = {"Retry-After": "0"} if status == 429 else {}
        return self._answer(handler, status, {"error": f"scripted {status}"}, extra)

    def _event(self, handler, order_id: str, headers: dict, raw: bytes, status: int, mode: str,
               hang: bool) -> None:
        """Take an order event: recorded once per webhook-id (before a scripted failure with "store")."""
        known = order_id in self.orders
        if known and (200 <= status < 300 or mode == "store"):
            with self.lock:
                if headers["webhook-id"] not in {e["headers"]["webhook-id"] for e in self.events}:
                    self.events.append({"headers": headers, "raw": raw, "body": json.loads(raw),
                                        "order_id": order_id})
        if hang:
            self.in_flight.set()
            self.release.wait(30)
        if not 200 <= status < 300:
            extra = {"Retry-After": "0"} if status == 429 else {}
            return self._answer(handler, status, {"error": f"scripted {status}"}, extra)
        if not known:
            return self._answer(handler, 404, {"error": f"no order {order_id}"})
        return self._answer(handler, status)

    def _store(self, key: str, raw: bytes):
        with self.lock:
            order = self.orders.get(key)
            if order is not None:
                return (False, order) if order["raw"] == raw else None
            order = {"raw": raw, "body": json.loads(raw), "reference": f"LAB-{next(self._refs):05d}"}
            self.orders[key] = order
            return True, order
