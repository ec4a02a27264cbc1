"""The server stack every sandbox shares: a werkzeug WSGI app built from one table of routes, JSON
answers and errors, small request helpers, and a threaded server on loopback to start and stop.

    app = Routes([("/orders", "POST", "orders", handler), ...])
    server = Server(app, port=0).start()   # .url; .stop()

A handler takes the request (and the route's arguments) and returns a werkzeug Response, or raises
ApiError for any other answer.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import signal
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

HOST = "127.0.0.1"
MAX_BODY = 1_000_000


class ApiError(Exception):
    """An answer other than success: {"error": message}, or RFC 6749's shape at a token endpoint."""

    def __init__(self, status: int, message: str, *, oauth: str = "", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.oauth, self.headers = status, message, oauth, headers or {}

    def response(self) -> Response:
        body = {"error": self.oauth, "error_description": self.message} if self.oauth else {"error": self.message}
        return json_response(body, self.status, self.headers)


def json_response(body, status: int = 200, headers: dict | None = None) -> Response:
    if body is None:
        return Response(status=status, headers=headers)
    return Response(json.dumps(body), status=status, headers=headers, mimetype="application/json")


def is_loopback(url: str) -> bool:
    """A sandbox only ever calls back to this machine."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def json_body(request: Request) -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object (Content-Type: application/json)")
    return body


def int_arg(request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, not {raw!r}") from None
    if value < low or (high is not None and value > high):
        raise ApiError(400, f"{name} must be between {low} and {high}" if high is not None
                       else f"{name} must be at least {low}")
    return value


def bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "an Authorization: Bearer token is required",
                       headers={"WWW-Authenticate": 'Bearer error="invalid_request"'})
    return token.strip()


class SandboxRequest(Request):
    max_content_length = MAX_BODY


Handler = Callable[..., Response]


class Routes:
    """A WSGI app from (path, method, endpoint name, handler) rows. Unknown paths and methods, bodies
    over MAX_BODY and ApiErrors all answer JSON. `before(name, request)` runs before each handler
    (faults, request logs) and `after(name, request, response)` after it."""

    def __init__(self, routes: list[tuple[str, str, str, Handler]]):
        self.url_map = Map([Rule(path, endpoint=name, methods=[method]) for path, method, name, _ in routes])
        self.handlers = {name: handler for _, _, name, handler in routes}

    def before(self, name: str, request: Request) -> None:
        pass

    def after(self, name: str, request: Request, response: Response) -> None:
        pass

    def __call__(self, environ, start_response):
        return self.dispatch(SandboxRequest(environ))(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        try:
            name, args = self.url_map.bind_to_environ(request.environ).match()
        except HTTPException as exc:
            return json_response({"error": exc.description}, exc.code)
        try:
            self.before(name, request)
            response = self.handlers[name](request, **args)
        except ApiError as exc:
            response = exc.response()
        except HTTPException as exc:  # e.g. a body over the size limit
            response = json_response({"error": exc.description}, exc.code)
        self.after(name, request, response)
        return response


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code="-", size="-"):
        logging.getLogger("sandbox").debug("%s %s", self.requestline, code)


class Server:
    """A WSGI app served from a thread on loopback: `Server(app, port=0).start()`, `.url`, `.stop()`."""

    def __init__(self, app, host: str = HOST, port: int = 0, name: str = "sandbox"):
        self.app, self.host, self.port, self.name = app, host, port, name
        self.server = None
        self.thread: threading.Thread | None = None

    def start(self) -> Server:
        self.server = make_server(self.host, self.port, self.app, threaded=True, request_handler=_QuietHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True, name=f"{self.name}-http")
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


def serve_until_stopped(*stops: Callable[[], None]) -> None:
    """A sandbox's `python -m` main: wait until SIGTERM (make run stopping it) or Ctrl-C, then call
    each of `stops` in turn."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for stop in stops:
            stop()
