"""A vendor sandbox: iTero and Medit Link as our adapters see them, over real HTTP.

It plays the outside world, so it imports nothing of the portal. One server, one port, both vendors:

  python -m sandbox.vendors --port 5056 --demo   (make run starts it)
  Sandbox().start()                                          (tests: a free port, in a thread)

iTero (docs/vendors/itero.md "Wire shapes", the flows of docs/sources.md source 001), under /itero:
  GET  /itero/oauth/authorize?client_id&redirect_uri&state   the "login page": approves at once and
                                                               redirects to redirect_uri?code&state
  POST /itero/oauth/token     form grant_type=authorization_code|refresh_token, HTTP Basic client auth
  POST /itero/oauth/revoke    form token
  GET  /itero/discovery       {"region", "endpoints": {...}}: the URLs below, on the host the request
                              came to; the endpoint "return_to_doctor" (POST {"reason"}) is ours, not
                              the contract's. Discovery needs no token (it comes before a refresh),
                              unless strict: then a Bearer token it issued (expired or not).
  GET  /itero/api/accounts, POST /itero/api/pair, POST /itero/api/unpair,
  GET  /itero/api/practice-configuration, POST /itero/api/scan-requests,
  DELETE /itero/api/scan-requests/{rx_id}, GET /itero/api/orders?updated_since&page (pages count from
  1, from 0 when strict; updated_since is inclusive; oldest first), GET /itero/api/orders/by-rx/{rx_id},
  GET /itero/api/download/{order_id}/{ide|thumbnails}, POST /itero/api/orders/{order_id}/return-to-doctor
  Tokens from the authorization code reach accounts and pair; pair returns tokens bound to the account,
  and only those reach the practice's orders (403 otherwise). Unpair ends the pairing and its tokens.
  The sandbox speaks the practice side: a scan is "Completed" (the lab side's "Ready for Download" can
  be set with a move). When an order becomes Completed, Ready for Download or Lab Review the sandbox
  POSTs {"rx_id", "account_number"} to the callback_url given at pairing.
  The download is a real zip: small binary STL meshes (closed prisms) and metadata.json for "ide",
  small PNG images (iTero sends JPG) for "thumbnails".

Medit Link (docs/vendors/medit.md), under /medit (auth host and resources host are both {url}/medit):
  GET  /medit/oauth/authorize?client_id&response_type=code&redirect_uri&scope&state   (approves at once)
  POST /medit/oauth/token     HTTP Basic (32-character client id and secret); a refresh token only
                              when the scope holds offline_access
  GET  /medit/v1/me, GET /medit/v1/cases/search?schema=latest&size&page&start&end (zero-based pages,
  oldest dateUpdated first, start and end inclusive, epoch ms), GET /medit/v1/cases/{uuid},
  GET /medit/v1/files/{uuid}?type=stl -> {uuid, url, downloadFileName}; the url (no auth, valid 15
  minutes) serves a zip holding the STL (Medit serves 7z; the name says .zip so nobody is misled).
  Dates (dateCreated, dateUpdated, dateIssued) are epoch milliseconds.
  Webhooks go to the URL registered through the control API, signed x-meditlink-signature = hex
  HMAC-SHA256(secret, raw body), with x-meditlink-event-code: case.created, case.updated, case.deleted,
  files.created, files.upload.updated. Body {"schemaVersion": "2022-01-28", "dateIssued", "case": CASE}
  or {"files": [FILE + "caseUuid"]}.

Both vendors: a refresh returns a new refresh token and the old one stops working; every refresh call
is counted ("itero.refresh", "medit.refresh"; refused ones also as "...refresh_refused"). 401 for an
unknown or expired token, 400 for a bad parameter, 404 for an unknown id; faults can be injected per
endpoint name (the next N calls answer 429 with Retry-After, or 500, or hang X seconds first).

Control API (JSON) for tests and the demo, under /_sandbox (not counted, not logged):
  POST /reset · GET|POST /config · POST /clients · POST /tokens/expire · POST|DELETE /faults ·
  GET /counters · GET /requests[?endpoint=] · GET /deliveries ·
  GET|POST /itero/orders · POST /itero/orders/{order_id}/move {"to", "new_assets"} ·
  POST /itero/rx/{rx_id}/scan · GET /itero/pairings ·
  POST /medit/cases · POST /medit/cases/{uuid}/move {"status", "new_files", "upload_status"} ·
  DELETE /medit/cases/{uuid} · POST /medit/webhook {"url", "secret", "duplicate", "hold"} ·
  POST /medit/webhook/flush {"reverse"}
`Sandbox` below wraps all of it in Python for pytest fixtures.

Demo mode registers the DEMO_* clients below and, every VENDOR_DEMO_STEP_SECONDS (default 30), takes
one step: the next move of the oldest order still in a flow, and every VENDOR_DEMO_NEW_EVERY steps
(10), up to VENDOR_DEMO_MAX_SCANS (12) in a run, a new iTero order or Medit case (alternately) for
one of the demo patients (--patient "First,Last,Chart,YYYY-MM-DD", repeatable, or
VENDOR_DEMO_PATIENTS with ";" between them; see Demo for the first three). Callbacks and webhooks only go to loopback
addresses unless the config says otherwise.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import hmac
import io
import itertools
import json
import logging
import math
import os
import random
import re
import secrets
import struct
import threading
import time
import uuid
import zipfile
import zlib
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from sandbox.server import (
    HOST,
    ApiError,
    Routes,
    Server,
    bearer_token,
    int_arg,
    is_loopback,
    json_body,
    json_response,
    serve_until_stopped,
)

log = logging.getLogger("vendor-sandbox")

PORT = int(os.environ.get("VENDOR_SANDBOX_PORT", "5056"))
STEP = float(os.environ.get("VENDOR_DEMO_STEP_SECONDS", "30"))

# Fixed demo credentials (demo mode registers them; they guard nothing real).
ITERO_DEMO_CLIENT_ID = "lab-manager-demo"
ITERO_DEMO_CLIENT_SECRET = "itero-demo-secret-0001"
MEDIT_DEMO_CLIENT_ID = "LabManagerDemoMeditClient0000001"  # Medit's ids and secrets are 32 characters
MEDIT_DEMO_CLIENT_SECRET = "LabManagerDemoMeditSecret0000001"
MEDIT_DEMO_WEBHOOK_SECRET = "medit-demo-webhook-signing-secret"

ITERO_ACCOUNTS = [
    {"account_id": "8001234", "company_name": "Bright Smile Dental", "region": "us"},
    {"account_id": "8005678", "company_name": "Bright Smile Dental - Eastside", "region": "us"},
]
ITERO_DOCTORS = [{"doctor_id": "DR-1001", "name": "Dr. Maya Chen"},
                 {"doctor_id": "DR-1002", "name": "Dr. Tom Okafor"}]
ITERO_SCANNERS = [{"serial": "IT5D-00012345"}]
DEFAULT_LAB = {"lab_id": "LAB-KEYSTONE", "name": "Keystone Digital Lab"}

# iTero statuses by the names the control API moves orders with.
ITERO_STATUS = {
    "ready": "Completed",
    "ready_for_download": "Ready for Download",
    "modeling": "iTero Modeling",
    "lab_review": "Lab Review",
    "scanning": "Scanning",
    "milling": "iTero Milling",
    "ready_to_ship": "Ready to Ship",
    "downloaded": "Downloaded",
}
ITERO_NOTIFY = {"Completed", "Ready for Download", "Lab Review"}  # a callback fires on entering these
ITERO_RETURNABLE = ITERO_NOTIFY  # the lab can send these back to the doctor
# The flows of docs/sources.md source 001, as the moves that follow a first scan ("Completed").
ITERO_FLOWS = {
    "direct": [],
    "modelling": ["modeling", "lab_review"],
    "rescan": ["scanning", "ready"],
    "milling": ["modeling", "lab_review", "milling", "ready_to_ship", "downloaded"],
    "interpretation2": ["modeling", "lab_review", "modeling", "lab_review", "milling", "ready_to_ship",
                        "downloaded"],
}

MEDIT_USER = {"uuid": "U0FOREVNTy1VU0VSLTAwMDE", "name": "Front Desk", "email": "frontdesk@brightsmile.test",
              "group": {"uuid": "R1JPVVAtQlJJR0hULVNNSUxF", "name": "Bright Smile Dental"}}
MEDIT_STATUSES = ("FORM", "SCAN", "NEED_PROCESSING", "CAD", "CAM", "MILL", "COMPLETED")
MEDIT_UPLOAD = ("LOCAL_ONLY", "STARTED", "SUCCEED", "FAILED")
MEDIT_FILE_TYPES = ("SCAN_DATA", "CAD_DATA", "CAM_DATA", "MILLING_DATA", "ATTACHED_DATA")
MEDIT_SCHEMA = "2022-01-28"
MEDIT_JAWS = (("upper", "UpperJawScan"), ("lower", "LowerJawScan"), ("bite", "BiteScan"))
MEDIT_MAX_PAGE_SIZE = 100

DEFAULT_CONFIG = {
    "token_ttl": 3600,  # seconds an access token lives
    "page_size": 20,  # iTero orders per page
    "callbacks": True,  # iTero scan callbacks on or off (off: the adapter must poll)
    "foreign_host": "",  # when set, discovery puts the endpoints below on this host (docs/reliability.md W8)
    "foreign_endpoints": ["orders"],
    "loopback_only": True,  # callbacks and webhooks only to loopback addresses
    "max_items": 1000,  # orders and cases kept; the oldest go first
    # iTero read strictly, as a vendor written only from the contract may behave: discovery wants the
    # Bearer like every call after the token; orders pages count from 0; Get Orders lists only the
    # orders in Completed / Ready for Download or Lab Review (docs/sources.md source 001), so an order that moves on to
    # iTero Modeling, Scanning, iTero Milling, Ready to Ship or Downloaded is read only by its Rx id.
    "strict": False,
}
ITERO_LISTED = {"Completed", "Ready for Download", "Lab Review"}  # what a strict Get Orders lists
MAX_TOKENS = 10_000
MAX_HELD = 1000  # held webhooks (and queued deliveries) kept at most; the oldest go first
CODE_TTL = 600
LINK_TTL = 900
FDI = re.compile(r"^(?:[1-4][1-8]|[5-8][1-5])$")
ZIP_TIME = (2024, 1, 1, 0, 0, 0)


def iso(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds and a Z."""
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_iso(value: str) -> int:
    """ISO 8601 (a date, or a time with Z or an offset; a naive time is UTC) as epoch milliseconds."""
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


# --- files: small but real ---

def _prism(seed: int) -> tuple[list[tuple], list[tuple]]:
    """A closed prism, 6 to 13 sides by seed: vertices and triangles (outward, counter-clockwise)."""
    sides, radius, height = 6 + seed % 8, 10.0 + seed % 5, 8.0
    ring = [(radius * math.cos(2 * math.pi * k / sides), radius * math.sin(2 * math.pi * k / sides))
            for k in range(sides)]
    vertices = [(x, y, 0.0) for x, y in ring] + [(x, y, height) for x, y in ring] + \
        [(0.0, 0.0, 0.0), (0.0, 0.0, height)]
    bottom, top = 2 * sides, 2 * sides + 1
    faces = []
    for k in range(sides):
        n = (k + 1) % sides
        faces += [(k, n, sides + n), (k, sides + n, sides + k), (top, sides + k, sides + n), (bottom, n, k)]
    return vertices, faces


def stl_mesh(seed: int) -> bytes:
    """A binary STL of the prism."""
    vertices, faces = _prism(seed)
    out = [f"lab-manager vendor sandbox mesh {seed}".encode().ljust(80, b" "), struct.pack("<I", len(faces))]
    for face in faces:
        a, b, c = (vertices[i] for i in face)
        u, v = [b[i] - a[i] for i in range(3)], [c[i] - a[i] for i in range(3)]
        normal = (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])
        length = math.sqrt(sum(x * x for x in normal)) or 1.0
        out.append(struct.pack("<12fH", *(x / length for x in normal), *a, *b, *c, 0))
    return b"".join(out)


def ply_mesh(seed: int) -> bytes:
    """An ASCII PLY of the prism."""
    vertices, faces = _prism(seed)
    lines = ["ply", "format ascii 1.0", f"element vertex {len(vertices)}", "property float x", "property float y",
             "property float z", f"element face {len(faces)}", "property list uchar int vertex_indices",
             "end_header"]
    lines += [f"{x:.4f} {y:.4f} {z:.4f}" for x, y, z in vertices]
    lines += [f"3 {a} {b} {c}" for a, b, c in faces]
    return ("\n".join(lines) + "\n").encode()


def mesh_bytes(file_format: str, seed: int) -> bytes:
    return ply_mesh(seed) if file_format.upper() == "PLY" else stl_mesh(seed)


def png_image(seed: int, size: int = 16) -> bytes:
    """A small single-colour PNG."""
    rgb = bytes(((seed * 67) % 200 + 40, (seed * 131) % 200 + 40, (seed * 29) % 200 + 40))
    raw = b"".join(b"\x00" + rgb * size for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def zip_bytes(files: list[tuple[str, bytes]]) -> bytes:
    """A zip of (name, bytes); the same files give the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files:
            archive.writestr(zipfile.ZipInfo(name, date_time=ZIP_TIME), data, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _seed(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


class Courier:
    """Posts callbacks and webhooks from one background thread, in the order they were queued. One try
    each; a failure is logged and kept in `sent` with the others."""

    def __init__(self):
        self.cond = threading.Condition()
        self.queue: collections.deque[dict] = collections.deque(maxlen=MAX_HELD)
        self.sent: collections.deque[dict] = collections.deque(maxlen=500)
        self.busy = False
        self.stopping = False
        self.loopback_only = True
        self.client = httpx.Client(timeout=httpx.Timeout(5.0))

    def post(self, label: str, url: str, body: bytes, headers: dict) -> None:
        with self.cond:
            self.queue.append({"label": label, "url": url, "body": body, "headers": headers})
            self.cond.notify_all()

    def run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.queue or self.stopping)
                if self.stopping:
                    return
                item = self.queue.popleft()
                self.busy = True
            result = self._deliver(item)
            with self.cond:
                self.sent.append(result)
                self.busy = False
                self.cond.notify_all()

    def _deliver(self, item: dict) -> dict:
        result = {"label": item["label"], "url": item["url"], "body": json.loads(item["body"]),
                  "headers": item["headers"], "status": None, "error": ""}
        if self.loopback_only and not is_loopback(item["url"]):
            result["error"] = "not sent: only loopback addresses are called"
            log.warning("%s not sent to %s: only loopback addresses are called", item["label"], item["url"])
            return result
        try:
            response = self.client.post(item["url"], content=item["body"],
                                        headers={"Content-Type": "application/json", **item["headers"]})
            result["status"] = response.status_code
            log.info("%s -> %s %s", item["label"], item["url"], response.status_code)
        except httpx.HTTPError as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            log.warning("%s to %s failed: %s", item["label"], item["url"], result["error"])
        return result

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued has been tried; False on timeout."""
        with self.cond:
            return self.cond.wait_for(lambda: not self.queue and not self.busy, timeout)

    def clear(self) -> None:
        with self.cond:
            self.queue.clear()
            self.sent.clear()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


class Core:
    """What both vendors share: one lock over all state, a clock, the settings, OAuth clients, codes and
    tokens, counters, the request log and the injected faults."""

    def __init__(self, courier: Courier):
        self.lock = threading.RLock()
        self.courier = courier
        self.last_ms = 0
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.config = json.loads(json.dumps(DEFAULT_CONFIG))
            self.courier.loopback_only = True
            self.clients: dict[tuple[str, str], dict] = {}  # (vendor, client_id) -> secret, redirect_uris
            self.codes: dict[str, dict] = {}
            self.access: dict[str, dict] = {}
            self.refresh: dict[str, dict] = {}
            self.counters: collections.Counter = collections.Counter()
            self.requests: collections.deque[dict] = collections.deque(maxlen=1000)
            self.faults: dict[str, collections.deque] = {}

    def now_ms(self) -> int:
        """Epoch milliseconds, strictly later than the last call: two changes never share a time."""
        with self.lock:
            self.last_ms = max(int(time.time() * 1000), self.last_ms + 1)
            return self.last_ms

    def configure(self, changes: dict) -> dict:
        kinds = {"token_ttl": int, "page_size": int, "callbacks": bool, "foreign_host": str,
                 "foreign_endpoints": list, "loopback_only": bool, "max_items": int, "strict": bool}
        for key, value in changes.items():
            if key not in kinds:
                raise ApiError(400, f"unknown setting {key!r}; known: {', '.join(sorted(kinds))}")
            if not isinstance(value, kinds[key]) or (kinds[key] is int and (isinstance(value, bool) or value < 1)):
                wanted = "positive integer" if kinds[key] is int else kinds[key].__name__
                raise ApiError(400, f"{key} must be a {wanted}")
        with self.lock:
            self.config.update(changes)
            self.courier.loopback_only = self.config["loopback_only"]
            return dict(self.config)

    # --- faults, counters, the request log ---
    def add_fault(self, endpoint: str, kind: str, count: int = 1, retry_after: int = 1,
                  seconds: float = 1.0) -> None:
        kind = str(kind)
        if kind not in ("429", "500", "hang"):
            raise ApiError(400, "kind must be 429, 500 or hang")
        if not isinstance(count, int) or count < 1:
            raise ApiError(400, "count must be a positive integer")
        with self.lock:
            queue = self.faults.setdefault(endpoint, collections.deque())
            for _ in range(count):
                queue.append({"kind": kind, "retry_after": retry_after, "seconds": float(seconds)})

    def take_fault(self, endpoint: str) -> dict | None:
        with self.lock:
            queue = self.faults.get(endpoint)
            return queue.popleft() if queue else None

    def log_request(self, endpoint: str, request: Request) -> dict:
        raw = request.get_data(cache=True)
        if request.mimetype == "application/x-www-form-urlencoded":
            body = request.form.to_dict()
        else:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw[:2000].decode("utf-8", "replace")
        entry = {"method": request.method, "path": request.path, "query": request.args.to_dict(),
                 "endpoint": endpoint, "auth": "Authorization" in request.headers,
                 "auth_scheme": request.headers.get("Authorization", "").partition(" ")[0],
                 "headers": {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("x-")},
                 "body": body, "status": None}
        with self.lock:
            self.counters[endpoint] += 1
            self.requests.append(entry)
        return entry

    # --- OAuth ---
    def add_client(self, vendor: str, client_id: str, client_secret: str, redirect_uris=()) -> None:
        if vendor not in ("itero", "medit"):
            raise ApiError(400, "vendor must be itero or medit")
        if not client_id or not client_secret:
            raise ApiError(400, "client_id and client_secret are required")
        if vendor == "medit" and (len(client_id) != 32 or len(client_secret) != 32):
            raise ApiError(400, "Medit client ids and secrets are 32 characters")
        with self.lock:
            self.clients[(vendor, client_id)] = {"secret": client_secret, "redirect_uris": list(redirect_uris)}

    def authorize(self, vendor: str, args) -> str:
        """Approve at once: the URL to send the browser back to, with a code and the state."""
        client_id, redirect_uri = args.get("client_id", ""), args.get("redirect_uri", "")
        with self.lock:
            client = self.clients.get((vendor, client_id))
            if client is None:
                raise ApiError(400, f"unknown client_id {client_id!r}")
            if vendor == "medit" and args.get("response_type") != "code":
                raise ApiError(400, "response_type must be code")
            if not redirect_uri:
                raise ApiError(400, "redirect_uri is required")
            if client["redirect_uris"] and redirect_uri not in client["redirect_uris"]:
                raise ApiError(400, f"redirect_uri {redirect_uri!r} is not registered for this client")
            if urlsplit(redirect_uri).scheme != "https" and not is_loopback(redirect_uri):
                raise ApiError(400, "redirect_uri must be https (plain http only on loopback)")
            now = time.time()
            self.codes = {c: r for c, r in self.codes.items() if r["expires"] > now}
            code = secrets.token_urlsafe(16)
            self.codes[code] = {"vendor": vendor, "client_id": client_id, "redirect_uri": redirect_uri,
                                "scope": args.get("scope", ""), "expires": now + CODE_TTL}
        query = {"code": code, **({"state": args["state"]} if "state" in args else {})}
        return redirect_uri + ("&" if "?" in redirect_uri else "?") + urlencode(query)

    def client_from_basic(self, vendor: str, request: Request) -> str:
        auth = request.authorization
        unauthorized = {"WWW-Authenticate": 'Basic realm="sandbox"'}
        if auth is None or auth.type != "basic":
            raise ApiError(401, "HTTP Basic client authentication is required", oauth="invalid_client",
                           headers=unauthorized)
        with self.lock:
            client = self.clients.get((vendor, auth.username or ""))
        if client is None or not hmac.compare_digest(client["secret"], auth.password or ""):
            raise ApiError(401, "unknown client or wrong secret", oauth="invalid_client", headers=unauthorized)
        return auth.username

    def token(self, vendor: str, request: Request) -> dict:
        client_id = self.client_from_basic(vendor, request)
        form = request.form
        grant = form.get("grant_type", "")
        with self.lock:
            if grant == "authorization_code":
                code = self.codes.pop(form.get("code", ""), None)
                if code is None or code["vendor"] != vendor or code["client_id"] != client_id \
                        or code["expires"] < time.time():
                    raise ApiError(400, "unknown, used or expired code", oauth="invalid_grant")
                if form.get("redirect_uri", "") != code["redirect_uri"]:
                    raise ApiError(400, "redirect_uri differs from the authorize request", oauth="invalid_grant")
                return self.issue(vendor, client_id, scope=code["scope"])
            if grant == "refresh_token":
                self.counters[f"{vendor}.refresh"] += 1
                held = self.refresh.get(form.get("refresh_token", ""))
                if held is None or held["vendor"] != vendor or held["client_id"] != client_id:
                    self.counters[f"{vendor}.refresh_refused"] += 1
                    raise ApiError(400, "unknown or already used refresh token", oauth="invalid_grant")
                del self.refresh[form["refresh_token"]]
                return self.issue(vendor, client_id, account_id=held["account_id"], scope=held["scope"])
        raise ApiError(400, "grant_type must be authorization_code or refresh_token", oauth="unsupported_grant_type")

    def issue(self, vendor: str, client_id: str, account_id: str | None = None, scope: str = "") -> dict:
        """A new token set. Medit gives a refresh token only for the offline_access scope."""
        with self.lock:
            ttl = self.config["token_ttl"]
            access = f"{vendor[:2]}at_{secrets.token_urlsafe(24)}" if vendor == "itero" else str(uuid.uuid4())
            grant = {"vendor": vendor, "client_id": client_id, "account_id": account_id, "scope": scope}
            self.access[access] = dict(grant, expires_at=time.time() + ttl)
            body = {"access_token": access, "token_type": "Bearer", "expires_in": ttl}
            if vendor == "itero" or "offline_access" in scope.split():
                refresh = f"{vendor[:2]}rt_{secrets.token_urlsafe(24)}" if vendor == "itero" else str(uuid.uuid4())
                self.refresh[refresh] = grant
                body["refresh_token"] = refresh
            if vendor == "medit":
                body["scope"] = scope
            for store in (self.access, self.refresh):
                while len(store) > MAX_TOKENS:
                    del store[next(iter(store))]
            return body

    def revoke(self, vendor: str, request: Request) -> None:
        if request.authorization is not None:
            self.client_from_basic(vendor, request)
        token = request.form.get("token", "")
        if not token:
            raise ApiError(400, "token is required", oauth="invalid_request")
        with self.lock:
            for store in (self.access, self.refresh):
                if store.get(token, {}).get("vendor") == vendor:
                    del store[token]

    def bearer(self, vendor: str, request: Request) -> dict:
        token = bearer_token(request)
        with self.lock:
            grant = self.access.get(token)
            if grant is None or grant["vendor"] != vendor:
                raise ApiError(401, "unknown or revoked access token",
                               headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            if grant["expires_at"] <= time.time():
                raise ApiError(401, "the access token has expired",
                               headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return dict(grant)

    def issued(self, vendor: str, request: Request) -> dict:
        """The grant of a Bearer token we issued and nobody revoked, expired or not (strict iTero's
        discovery: it comes before a refresh, so an expired token still reaches it)."""
        token = bearer_token(request)
        with self.lock:
            grant = self.access.get(token)
            if grant is None or grant["vendor"] != vendor:
                raise ApiError(401, "discovery needs the Bearer access token",
                               headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return dict(grant)

    def expire_tokens(self, vendor: str | None = None) -> int:
        with self.lock:
            grants = [g for g in self.access.values() if vendor in (None, g["vendor"])]
            for grant in grants:
                grant["expires_at"] = 0
            return len(grants)

    def drop_tokens(self, vendor: str, account_id: str) -> None:
        with self.lock:
            for store in (self.access, self.refresh):
                for token in [t for t, g in store.items() if g["vendor"] == vendor and g["account_id"] == account_id]:
                    del store[token]


def public(record: dict) -> dict:
    """A stored record without its private keys (those starting with "_"), as a fresh copy."""
    return json.loads(json.dumps({k: v for k, v in record.items() if not k.startswith("_")}))


def check_patient(patient, *, required: bool) -> dict:
    if not isinstance(patient, dict):
        raise ApiError(400, "patient must be an object with first_name, last_name, chart_number, date_of_birth")
    if required and not (str(patient.get("first_name", "")).strip() and str(patient.get("last_name", "")).strip()):
        raise ApiError(400, "patient.first_name and patient.last_name are required")
    dob = patient.get("date_of_birth") or None
    if dob is not None:
        try:
            dt.date.fromisoformat(dob)
        except (TypeError, ValueError):
            raise ApiError(400, f"patient.date_of_birth must be YYYY-MM-DD, not {dob!r}") from None
    return {"first_name": str(patient.get("first_name", "")), "last_name": str(patient.get("last_name", "")),
            "chart_number": str(patient.get("chart_number", "") or ""), "date_of_birth": dob}


def check_teeth(teeth) -> list[str]:
    if not isinstance(teeth, list) or not all(isinstance(t, str | int) and FDI.match(str(t)) for t in teeth):
        raise ApiError(400, f"teeth must be a list of FDI tooth numbers such as \"11\" or \"36\", not {teeth!r}")
    return [str(t) for t in teeth]


class Itero:
    """iTero's DPMS API for a practice, and the control calls that move its orders."""

    def __init__(self, core: Core):
        self.core = core
        self.reset()

    def reset(self) -> None:
        with self.core.lock:
            self.orders: dict[str, dict] = {}  # order_id -> ORDER + "_account", "_t", "_scan"
            self.rxs: dict[str, dict] = {}  # rx_id -> the Rx + "_account", "_order"
            self.pairings: dict[str, dict] = {}  # account_id -> {"callback_url", "client_id"}
            # Order ids go on from the clock, so a restarted demo sandbox never reuses an order id
            # the portal already holds (a reused id would read as a rescan of someone else's order).
            self.ids = itertools.count(int(time.time()) % 100_000_000 * 10)

    # --- OAuth and discovery ---
    def authorize(self, request: Request) -> Response:
        return redirect(self.core.authorize("itero", request.args), 302)

    def token(self, request: Request) -> Response:
        return json_response(self.core.token("itero", request))

    def revoke(self, request: Request) -> Response:
        self.core.revoke("itero", request)
        return json_response({})

    def discovery(self, request: Request) -> Response:
        if self.core.config["strict"]:
            self.core.issued("itero", request)
        api = request.host_url.rstrip("/") + "/itero/api"
        endpoints = {
            "accounts": f"{api}/accounts",
            "pair": f"{api}/pair",
            "unpair": f"{api}/unpair",
            "practice_configuration": f"{api}/practice-configuration",
            "scan_request": f"{api}/scan-requests",
            "orders": f"{api}/orders",
            "order_by_rx": f"{api}/orders/by-rx/{{rx_id}}",
            "download": f"{api}/download/{{order_id}}/{{asset}}",
            "return_to_doctor": f"{api}/orders/{{order_id}}/return-to-doctor",
        }
        with self.core.lock:
            foreign, names = self.core.config["foreign_host"], self.core.config["foreign_endpoints"]
        if foreign:
            for name in names:
                if name in endpoints:
                    parts = urlsplit(endpoints[name])
                    endpoints[name] = urlunsplit(parts._replace(netloc=foreign))
        return json_response({"region": "us", "endpoints": endpoints})

    # --- pairing ---
    def accounts(self, request: Request) -> Response:
        self.core.bearer("itero", request)
        return json_response({"accounts": ITERO_ACCOUNTS})

    def pair(self, request: Request) -> Response:
        grant = self.core.bearer("itero", request)
        body = json_body(request)
        account_id = str(body.get("account_id") or "")
        callback_url = body.get("callback_url") or ""
        if not account_id:
            raise ApiError(400, "account_id is required")
        if account_id not in {a["account_id"] for a in ITERO_ACCOUNTS}:
            raise ApiError(404, f"no account {account_id} for this user")
        if callback_url and (not isinstance(callback_url, str) or urlsplit(callback_url).scheme not in ("http", "https")
                             or not urlsplit(callback_url).hostname):
            raise ApiError(400, "callback_url must be an http(s) URL")
        with self.core.lock:
            self.pairings[account_id] = {"callback_url": callback_url, "client_id": grant["client_id"]}
            tokens = self.core.issue("itero", grant["client_id"], account_id=account_id)
        log.info("iTero account %s paired (callback %s)", account_id, callback_url or "none")
        return json_response(tokens)

    def unpair(self, request: Request) -> Response:
        account_id = self._account(self.core.bearer("itero", request))
        with self.core.lock:
            self.pairings.pop(account_id, None)
            self.core.drop_tokens("itero", account_id)
        log.info("iTero account %s unpaired", account_id)
        return json_response({"account_id": account_id, "paired": False})

    def _account(self, grant: dict) -> str:
        account_id = grant["account_id"]
        with self.core.lock:
            if account_id is None or account_id not in self.pairings:
                raise ApiError(403, "this token is not paired to an account: call pair first")
        return account_id

    # --- the practice's API ---
    def practice_configuration(self, request: Request) -> Response:
        self._account(self.core.bearer("itero", request))
        return json_response({"doctors": ITERO_DOCTORS, "scanners": ITERO_SCANNERS})

    def create_rx(self, request: Request) -> Response:
        account_id = self._account(self.core.bearer("itero", request))
        body = json_body(request)
        patient = check_patient(body.get("patient"), required=True)
        doctor = next((d for d in ITERO_DOCTORS if d["doctor_id"] == body.get("doctor_id")), None)
        if doctor is None:
            raise ApiError(400, f"unknown doctor_id {body.get('doctor_id')!r}; see practice_configuration")
        procedure = body.get("procedure")
        if not isinstance(procedure, str) or not procedure.strip():
            raise ApiError(400, "procedure is required")
        teeth = check_teeth(body.get("teeth", []))
        due_date = body.get("due_date") or None
        if due_date is not None:
            try:
                dt.date.fromisoformat(due_date)
            except (TypeError, ValueError):
                raise ApiError(400, f"due_date must be YYYY-MM-DD, not {due_date!r}") from None
        lab_name = str(body.get("lab_name") or "")
        lab = {"lab_id": f"LAB-{_seed(lab_name) % 100000:05d}", "name": lab_name} if lab_name else None
        with self.core.lock:
            rx_id = self._new_rx(account_id, patient, doctor, procedure.strip(), teeth, lab, due_date,
                                 str(body.get("notes") or ""))
        return json_response({"rx_id": rx_id})

    def delete_rx(self, request: Request, rx_id: str) -> Response:
        account_id = self._account(self.core.bearer("itero", request))
        with self.core.lock:
            rx = self.rxs.get(rx_id)
            if rx is None or rx["_account"] != account_id:
                raise ApiError(404, f"no Rx {rx_id}")
            if rx["_order"]:
                raise ApiError(409, f"Rx {rx_id} has a scan (order {rx['_order']}) and cannot be deleted")
            del self.rxs[rx_id]
        return Response(status=204)

    def list_orders(self, request: Request) -> Response:
        account_id = self._account(self.core.bearer("itero", request))
        since = request.args.get("updated_since")
        try:
            since_ms = parse_iso(since) if since else 0
        except ValueError:
            raise ApiError(400, f"updated_since must be ISO 8601, not {since!r}") from None
        strict = self.core.config["strict"]
        first = 0 if strict else 1  # which number the first page has
        page = int_arg(request, "page", first, first)
        with self.core.lock:
            size = self.core.config["page_size"]
            found = sorted((o for o in self.orders.values() if o["_account"] == account_id and o["_t"] >= since_ms
                            and (not strict or o["status"] in ITERO_LISTED)),
                           key=lambda o: (o["_t"], o["order_id"]))
            start = (page - first) * size
            chunk = [public(o) for o in found[start:start + size]]
            return json_response({"orders": chunk, "page": page, "has_more": len(found) > start + size})

    def order_by_rx(self, request: Request, rx_id: str) -> Response:
        account_id = self._account(self.core.bearer("itero", request))
        with self.core.lock:
            rx = self.rxs.get(rx_id)
            if rx is None or rx["_account"] != account_id:
                raise ApiError(404, f"no Rx {rx_id}")
            if not rx["_order"] or rx["_order"] not in self.orders:
                raise ApiError(404, f"Rx {rx_id} has no scan yet")
            return json_response(public(self.orders[rx["_order"]]))

    def download(self, request: Request, order_id: str, asset: str) -> Response:
        account_id = self._account(self.core.bearer("itero", request))
        if asset not in ("ide", "thumbnails"):
            raise ApiError(400, f"asset must be ide or thumbnails, not {asset!r}")
        with self.core.lock:
            order = self.orders.get(order_id)
            if order is None or order["_account"] != account_id:
                raise ApiError(404, f"no order {order_id}")
            order = public(order)
        data = self._ide_zip(order) if asset == "ide" else self._thumbnails_zip(order)
        return Response(data, mimetype="application/zip", headers={
            "Content-Disposition": f'attachment; filename="{order_id}_{asset}.zip"'})

    def return_to_doctor(self, request: Request, order_id: str) -> Response:
        account_id = self._account(self.core.bearer("itero", request))
        reason = json_body(request).get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ApiError(400, "reason is required")
        with self.core.lock:
            order = self.orders.get(order_id)
            if order is None or order["_account"] != account_id:
                raise ApiError(404, f"no order {order_id}")
            if order["status"] not in ITERO_RETURNABLE:
                raise ApiError(409, f"order {order_id} is {order['status']}; only a scan at the lab can be sent back")
            order["_returns"].append(reason.strip())
            return json_response(self.move(order_id, "scanning"))

    # --- what the scanner and Align's people do (control API, demo) ---
    def _new_rx(self, account_id, patient, doctor, procedure, teeth, lab, due_date, notes) -> str:
        rx_id = str(uuid.uuid4())
        self.rxs[rx_id] = {"rx_id": rx_id, "patient": patient, "doctor": doctor, "procedure": procedure,
                           "teeth": teeth, "lab": lab, "due_date": due_date, "notes": notes,
                           "_account": account_id, "_order": None}
        return rx_id

    def add_order(self, spec: dict) -> dict:
        """A scanned order (Completed unless `status` says otherwise), with its Rx."""
        account_id = str(spec.get("account_id") or ITERO_ACCOUNTS[0]["account_id"])
        if account_id not in {a["account_id"] for a in ITERO_ACCOUNTS}:
            raise ApiError(400, f"no account {account_id}")
        patient = check_patient(spec.get("patient") or {"first_name": "Alex", "last_name": "Morgan",
                                                        "chart_number": "", "date_of_birth": None}, required=True)
        doctor = spec.get("doctor") or ITERO_DOCTORS[0]
        if not isinstance(doctor, dict) or "doctor_id" not in doctor:
            raise ApiError(400, "doctor must be {doctor_id, name}")
        lab = spec["lab"] if "lab" in spec else DEFAULT_LAB
        if lab is not None and not (isinstance(lab, dict) and "name" in lab):
            raise ApiError(400, "lab must be {lab_id, name} or null")
        teeth = check_teeth(spec.get("teeth", ["36"]))
        status = self._status(spec.get("status", "ready"))
        assets = spec.get("assets")
        if assets is not None and not (isinstance(assets, list) and all(isinstance(a, dict) for a in assets)):
            raise ApiError(400, "assets must be a list of objects")
        with self.core.lock:
            rx_id = self._new_rx(account_id, patient, dict(doctor), str(spec.get("procedure") or "Crown"), teeth,
                                 lab, spec.get("due_date"), str(spec.get("notes") or ""))
            order = self._scan(rx_id, status, assets)
        return order

    def scan_rx(self, rx_id: str, status: str = "ready") -> dict:
        """The doctor scans an Rx: its order appears (Completed) and the callback fires."""
        with self.core.lock:
            rx = self.rxs.get(rx_id)
            if rx is None:
                raise ApiError(404, f"no Rx {rx_id}")
            if rx["_order"]:
                raise ApiError(409, f"Rx {rx_id} was scanned already (order {rx['_order']})")
            return self._scan(rx_id, self._status(status), None)

    def _scan(self, rx_id: str, status: str, assets: list | None) -> dict:
        rx = self.rxs[rx_id]
        order_id = str(3_000_000_000 + next(self.ids))
        now = self.core.now_ms()
        order = {"order_id": order_id, "rx_id": rx_id, "status": status, "updated_at": iso(now),
                 "patient": rx["patient"], "doctor": rx["doctor"], "procedure": rx["procedure"],
                 "teeth": rx["teeth"], "lab": rx["lab"], "due_date": rx["due_date"], "notes": rx["notes"],
                 "assets": [], "history": [{"status": status, "at": iso(now)}],
                 "_account": rx["_account"], "_t": now, "_scan": 1, "_returns": []}
        order["assets"] = self._assets(order, assets)
        rx["_order"] = order_id
        self.orders[order_id] = order
        self._prune()
        self._notify(order)
        return public(order)

    def _assets(self, order: dict, given: list | None) -> list[dict]:
        """The scan's files: the ones given (defaults filled in), or upper, lower and bite STLs and the
        thumbnails; new asset ids (and new meshes) for every scan."""
        stem = f"{order['order_id']}_scan{order['_scan']}"
        if given is not None:
            assets = []
            for n, asset in enumerate(given, start=1):
                asset_id = str(asset.get("asset_id") or f"{stem}_a{n}")
                file_format = str(asset.get("format") or "STL").upper()
                assets.append({"asset_id": asset_id, "kind": str(asset.get("kind") or "IDE"),
                               "file_name": str(asset.get("file_name") or f"{stem}_{n}.{file_format.lower()}"),
                               "format": file_format,
                               "size_bytes": asset.get("size_bytes") or len(mesh_bytes(file_format, _seed(asset_id))),
                               "jaw": asset.get("jaw")})
            return assets
        assets = [{"asset_id": f"{stem}_{jaw}", "kind": "IDE", "file_name": f"{stem}_{jaw}.stl", "format": "STL",
                   "size_bytes": len(stl_mesh(_seed(f"{stem}_{jaw}"))), "jaw": jaw}
                  for jaw in ("upper", "lower", "bite")]
        thumbnails = {"asset_id": f"{stem}_thumbnails", "kind": "IMAGE_GALLERY",
                      "file_name": f"{stem}_thumbnails.zip", "format": "ZIP", "size_bytes": 0, "jaw": None}
        assets.append(thumbnails)
        thumbnails["size_bytes"] = len(self._thumbnails_zip({"assets": assets}))
        return assets

    def _ide_zip(self, order: dict) -> bytes:
        meshes = [a for a in order["assets"] if a["kind"] == "IDE"]
        metadata = {"order_id": order["order_id"], "rx_id": order["rx_id"], "patient": order["patient"],
                    "doctor": order["doctor"], "procedure": order["procedure"], "teeth": order["teeth"],
                    "files": [{"asset_id": a["asset_id"], "file_name": a["file_name"], "format": a["format"],
                               "jaw": a["jaw"]} for a in meshes]}
        files = [(a["file_name"], mesh_bytes(a["format"], _seed(a["asset_id"]))) for a in meshes]
        return zip_bytes(files + [("metadata.json", json.dumps(metadata, indent=2).encode())])

    def _thumbnails_zip(self, order: dict) -> bytes:
        meshes = [a for a in order["assets"] if a["kind"] == "IDE"]
        return zip_bytes([(f"{a['asset_id']}.png", png_image(_seed(a["asset_id"]))) for a in meshes])

    @staticmethod
    def _status(name: str) -> str:
        if name in ITERO_STATUS:
            return ITERO_STATUS[name]
        if name in ITERO_STATUS.values():
            return name
        raise ApiError(400, f"unknown status {name!r}; one of {', '.join(ITERO_STATUS)}")

    def move(self, order_id: str, to: str, new_assets: bool = False) -> dict:
        """One step of a flow: the new status, a history entry, a later updated_at, and the callback where
        iTero would send one. "rescan" is two steps: Scanning, then Completed with new files; a scan
        after Scanning always brings new files."""
        with self.core.lock:
            order = self.orders.get(order_id)
            if order is None:
                raise ApiError(404, f"no order {order_id}")
            if to == "rescan":
                self.move(order_id, "scanning")
                return self.move(order_id, "ready", new_assets=True)
            status = self._status(to)
            if order["status"] == "Scanning" and status in ("Completed", "Ready for Download"):
                new_assets = True
            now = self.core.now_ms()
            order.update(status=status, updated_at=iso(now), _t=now)
            order["history"].append({"status": status, "at": iso(now)})
            if new_assets:
                order["_scan"] += 1
                order["assets"] = self._assets(order, None)
            self._notify(order)
            return public(order)

    def _notify(self, order: dict) -> None:
        """iTero's scan notification: only the Rx id and the account number."""
        if order["status"] not in ITERO_NOTIFY or not self.core.config["callbacks"]:
            return
        pairing = self.pairings.get(order["_account"])
        if not pairing or not pairing["callback_url"]:
            return
        body = json.dumps({"rx_id": order["rx_id"], "account_number": order["_account"]}).encode()
        self.core.courier.post(f"itero callback for order {order['order_id']} ({order['status']})",
                               pairing["callback_url"], body, {})

    def _prune(self) -> None:
        while len(self.orders) > self.core.config["max_items"]:
            oldest = self.orders.pop(next(iter(self.orders)))
            self.rxs.pop(oldest["rx_id"], None)

    def snapshot(self) -> dict:
        with self.core.lock:
            return {"orders": [dict(public(o), account_id=o["_account"], returns=list(o["_returns"]))
                               for o in self.orders.values()],
                    "rx": [dict(public(r), account_id=r["_account"], order_id=r["_order"]) for r in self.rxs.values()],
                    "pairings": json.loads(json.dumps(self.pairings))}


class Medit:
    """Medit Link's API for a clinic's group, its webhooks, and the control calls that move its cases."""

    def __init__(self, core: Core):
        self.core = core
        self.reset()

    def reset(self) -> None:
        with self.core.lock:
            self.cases: dict[str, dict] = {}  # uuid -> CASE
            self.files: dict[str, str] = {}  # file uuid -> case uuid
            self.links: dict[str, tuple[str, float]] = {}  # download token -> (file uuid, expires)
            self.webhook = {"url": "", "secret": "", "duplicate": False, "hold": False}
            self.held: list[tuple[str, bytes, dict]] = []

    # --- OAuth ---
    def authorize(self, request: Request) -> Response:
        return redirect(self.core.authorize("medit", request.args), 302)

    def token(self, request: Request) -> Response:
        return json_response(self.core.token("medit", request))

    def _auth(self, request: Request, group: bool) -> dict:
        grant = self.core.bearer("medit", request)
        client_id = request.headers.get("x-meditlink-client-id")
        if not client_id:
            raise ApiError(400, "the x-meditlink-client-id header is required")
        if client_id != grant["client_id"]:
            raise ApiError(401, "x-meditlink-client-id is not the client this token was issued to")
        if group:
            group_uuid = request.headers.get("x-meditlink-group-uuid")
            if not group_uuid:
                raise ApiError(400, "the x-meditlink-group-uuid header is required (see /v1/me group.uuid)")
            if group_uuid != MEDIT_USER["group"]["uuid"]:
                raise ApiError(403, "this user is not in that group")
        return grant

    # --- resources ---
    def me(self, request: Request) -> Response:
        self._auth(request, group=False)
        return json_response(MEDIT_USER)

    def search(self, request: Request) -> Response:
        self._auth(request, group=True)
        if request.args.get("schema") != "latest":
            raise ApiError(400, "schema=latest is required")
        size = int_arg(request, "size", 20, 1, MEDIT_MAX_PAGE_SIZE)
        page = int_arg(request, "page", 0, 0)
        start = int_arg(request, "start", 0, 0)
        end = int_arg(request, "end", 253402300799000, 0)
        with self.core.lock:
            found = sorted((c for c in self.cases.values() if start <= c["dateUpdated"] <= end),
                           key=lambda c: (c["dateUpdated"], c["uuid"]))
            content = [public(c) for c in found[page * size:(page + 1) * size]]
        total_pages = math.ceil(len(found) / size)
        return json_response({"content": content, "numberOfElements": len(content), "totalElements": len(found),
                              "totalPages": total_pages, "number": page, "size": size,
                              "first": page == 0, "last": page >= total_pages - 1})

    def case(self, request: Request, case_uuid: str) -> Response:
        self._auth(request, group=True)
        with self.core.lock:
            if case_uuid not in self.cases:
                raise ApiError(404, f"no case {case_uuid}")
            return json_response(public(self.cases[case_uuid]))

    def file(self, request: Request, file_uuid: str) -> Response:
        self._auth(request, group=True)
        if request.args.get("type") != "stl":
            raise ApiError(400, "type=stl is required")
        with self.core.lock:
            info = self._file(file_uuid)
            if info["uploadStatus"] != "SUCCEED":
                raise ApiError(409, f"file {file_uuid} is not uploaded (uploadStatus {info['uploadStatus']})")
            now = time.time()
            self.links = {t: v for t, v in self.links.items() if v[1] > now}
            link = secrets.token_urlsafe(18)
            self.links[link] = (file_uuid, now + LINK_TTL)
        stem = info["name"].rsplit(".", 1)[0]
        return json_response({"uuid": file_uuid, "url": request.host_url.rstrip("/") + f"/medit/downloads/{link}",
                              "downloadFileName": f"{stem}.zip"})

    def download(self, request: Request, link: str) -> Response:
        with self.core.lock:
            file_uuid, expires = self.links.get(link, ("", 0.0))
            if expires < time.time() or file_uuid not in self.files:
                raise ApiError(404, "no such download, or the link has expired")
            info = self._file(file_uuid)
        data = zip_bytes([(info["name"], stl_mesh(_seed(file_uuid)))])
        stem = info["name"].rsplit(".", 1)[0]
        return Response(data, mimetype="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{stem}.zip"'})

    def _file(self, file_uuid: str) -> dict:
        case_uuid = self.files.get(file_uuid)
        if case_uuid is None:
            raise ApiError(404, f"no file {file_uuid}")
        return next(f for f in self.cases[case_uuid]["files"] if f["uuid"] == file_uuid)

    # --- what the clinic does (control API, demo) ---
    def add_case(self, spec: dict) -> dict:
        """A case (COMPLETED with its three scans uploaded, unless `status`, `upload_status` or `files`
        say otherwise). `patient` is {first_name, last_name, chart_number} or Medit's {name, code}."""
        patient = spec.get("patient") or {"first_name": "Alex", "last_name": "Morgan", "chart_number": ""}
        if not isinstance(patient, dict):
            raise ApiError(400, "patient must be an object")
        name = patient.get("name") or f"{patient.get('first_name', '')} {patient.get('last_name', '')}".strip()
        if not name:
            raise ApiError(400, "the patient needs a name")
        status = self._check(spec.get("status", "COMPLETED"), MEDIT_STATUSES, "status")
        upload = self._check(spec.get("upload_status", "SUCCEED"), MEDIT_UPLOAD, "upload_status")
        files = spec.get("files")
        if files is not None and not (isinstance(files, list) and all(isinstance(f, dict) and f.get("name")
                                                                      for f in files)):
            raise ApiError(400, "files must be a list of objects with a name")
        with self.core.lock:
            now = self.core.now_ms()
            case_uuid = str(uuid.uuid4())
            label = spec.get("name") or f"{dt.date.fromtimestamp(now / 1000).isoformat()}_{name.replace(' ', '_')}"
            code = str(patient.get("code") or patient.get("chart_number") or "")
            case = {"uuid": case_uuid, "name": label, "status": status,
                    "patient": {"uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"medit-patient:{name}:{code}")),
                                "name": name, "code": code},
                    "files": [], "dateCreated": now, "dateUpdated": now}
            self.cases[case_uuid] = case
            case["files"] = self._new_files(case, files, upload)
            self._prune()
            self._event("case.created", "case", public(case))
            if case["files"]:
                self._event("files.created", "files", [dict(f, caseUuid=case_uuid) for f in case["files"]])
            return public(case)

    def _new_files(self, case: dict, given: list | None, upload: str) -> list[dict]:
        if given is None:
            given = [{"name": f"{case['name']}-{word}.stl"} for _, word in MEDIT_JAWS]
        files = []
        for spec in given:
            file_uuid = str(uuid.uuid4())
            files.append({"uuid": file_uuid, "name": str(spec["name"]),
                          "fileType": self._check(spec.get("fileType", "SCAN_DATA"), MEDIT_FILE_TYPES, "fileType"),
                          "uploadStatus": self._check(spec.get("uploadStatus", upload), MEDIT_UPLOAD, "uploadStatus")})
            self.files[file_uuid] = case["uuid"]
        return files

    def move(self, case_uuid: str, status: str | None = None, new_files: bool = False,
             upload_status: str | None = None) -> dict:
        """A change at the clinic: a new status, new scan files (a rescan), or the files' upload
        finishing; dateUpdated moves on and the webhooks fire."""
        with self.core.lock:
            case = self.cases.get(case_uuid)
            if case is None:
                raise ApiError(404, f"no case {case_uuid}")
            if status is not None:
                case["status"] = self._check(status, MEDIT_STATUSES, "status")
            if new_files:
                for old in case["files"]:
                    self.files.pop(old["uuid"], None)
                case["files"] = self._new_files(case, None, upload_status or "SUCCEED")
                self._event("files.created", "files", [dict(f, caseUuid=case_uuid) for f in case["files"]])
            elif upload_status is not None:
                upload = self._check(upload_status, MEDIT_UPLOAD, "upload_status")
                for f in case["files"]:
                    f["uploadStatus"] = upload
                self._event("files.upload.updated", "files", [dict(f, caseUuid=case_uuid) for f in case["files"]])
            case["dateUpdated"] = self.core.now_ms()
            self._event("case.updated", "case", public(case))
            return public(case)

    def delete_case(self, case_uuid: str) -> None:
        with self.core.lock:
            case = self.cases.pop(case_uuid, None)
            if case is None:
                raise ApiError(404, f"no case {case_uuid}")
            for f in case["files"]:
                self.files.pop(f["uuid"], None)
            self._event("case.deleted", "case", {"uuid": case_uuid, "dateUpdated": self.core.now_ms()})

    @staticmethod
    def _check(value, allowed: tuple, name: str) -> str:
        if value not in allowed:
            raise ApiError(400, f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        return value

    def _prune(self) -> None:
        while len(self.cases) > self.core.config["max_items"]:
            oldest = self.cases.pop(next(iter(self.cases)))
            for f in oldest["files"]:
                self.files.pop(f["uuid"], None)

    # --- webhooks ---
    def set_webhook(self, url: str, secret: str, duplicate: bool = False, hold: bool = False) -> None:
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise ApiError(400, "url must be an http(s) URL, or empty to stop webhooks")
        if url and not secret:
            raise ApiError(400, "a signing secret is required")
        with self.core.lock:
            self.webhook = {"url": url, "secret": secret, "duplicate": bool(duplicate), "hold": bool(hold)}

    def _event(self, code: str, key: str, payload) -> None:
        if not self.webhook["url"]:
            return
        raw = json.dumps({"schemaVersion": MEDIT_SCHEMA, "dateIssued": self.core.now_ms(), key: payload}).encode()
        signature = hmac.new(self.webhook["secret"].encode(), raw, hashlib.sha256).hexdigest()
        delivery = (code, raw, {"x-meditlink-event-code": code, "x-meditlink-signature": signature})
        if self.webhook["hold"]:
            self.held = (self.held + [delivery])[-MAX_HELD:]
            return
        self._send(delivery)

    def _send(self, delivery: tuple[str, bytes, dict]) -> None:
        code, raw, headers = delivery
        for _ in range(2 if self.webhook["duplicate"] else 1):
            self.core.courier.post(f"medit {code}", self.webhook["url"], raw, headers)

    def flush(self, reverse: bool = False) -> int:
        """Send the held webhooks, in the order they happened or reversed (out of order, docs/reliability.md W6)."""
        with self.core.lock:
            held, self.held = self.held, []
            for delivery in reversed(held) if reverse else held:
                self._send(delivery)
            return len(held)


class SandboxApp(Routes):
    """The WSGI app: one table of routes, each to a handler; faults, counters and the log on the way."""

    def __init__(self, core: Core, itero: Itero, medit: Medit, stopping: threading.Event):
        self.core, self.itero, self.medit, self.stopping = core, itero, medit, stopping
        routes = [
            # (path, method, endpoint name, handler)
            ("/itero/oauth/authorize", "GET", "itero.authorize", itero.authorize),
            ("/itero/oauth/token", "POST", "itero.token", itero.token),
            ("/itero/oauth/revoke", "POST", "itero.revoke", itero.revoke),
            ("/itero/discovery", "GET", "itero.discovery", itero.discovery),
            ("/itero/api/accounts", "GET", "itero.accounts", itero.accounts),
            ("/itero/api/pair", "POST", "itero.pair", itero.pair),
            ("/itero/api/unpair", "POST", "itero.unpair", itero.unpair),
            ("/itero/api/practice-configuration", "GET", "itero.practice_configuration",
             itero.practice_configuration),
            ("/itero/api/scan-requests", "POST", "itero.scan_request", itero.create_rx),
            ("/itero/api/scan-requests/<rx_id>", "DELETE", "itero.delete_rx", itero.delete_rx),
            ("/itero/api/orders", "GET", "itero.orders", itero.list_orders),
            ("/itero/api/orders/by-rx/<rx_id>", "GET", "itero.order_by_rx", itero.order_by_rx),
            ("/itero/api/orders/<order_id>/return-to-doctor", "POST", "itero.return_to_doctor",
             itero.return_to_doctor),
            ("/itero/api/download/<order_id>/<asset>", "GET", "itero.download", itero.download),
            ("/medit/oauth/authorize", "GET", "medit.authorize", medit.authorize),
            ("/medit/oauth/token", "POST", "medit.token", medit.token),
            ("/medit/v1/me", "GET", "medit.me", medit.me),
            ("/medit/v1/cases/search", "GET", "medit.cases_search", medit.search),
            ("/medit/v1/cases/<case_uuid>", "GET", "medit.case", medit.case),
            ("/medit/v1/files/<file_uuid>", "GET", "medit.file", medit.file),
            ("/medit/downloads/<link>", "GET", "medit.download", medit.download),
            ("/_sandbox/reset", "POST", "control.reset", self.c_reset),
            ("/_sandbox/config", "GET", "control.config", self.c_config),
            ("/_sandbox/config", "POST", "control.configure", self.c_config),
            ("/_sandbox/clients", "POST", "control.clients", self.c_clients),
            ("/_sandbox/tokens/expire", "POST", "control.expire", self.c_expire),
            ("/_sandbox/faults", "POST", "control.faults", self.c_faults),
            ("/_sandbox/faults", "DELETE", "control.clear_faults", self.c_clear_faults),
            ("/_sandbox/counters", "GET", "control.counters", self.c_counters),
            ("/_sandbox/requests", "GET", "control.requests", self.c_requests),
            ("/_sandbox/deliveries", "GET", "control.deliveries", self.c_deliveries),
            ("/_sandbox/itero/orders", "GET", "control.itero_list", self.c_itero_list),
            ("/_sandbox/itero/orders", "POST", "control.itero_add", self.c_itero_add),
            ("/_sandbox/itero/orders/<order_id>/move", "POST", "control.itero_move", self.c_itero_move),
            ("/_sandbox/itero/rx/<rx_id>/scan", "POST", "control.itero_scan", self.c_itero_scan),
            ("/_sandbox/itero/pairings", "GET", "control.itero_pairings", self.c_itero_pairings),
            ("/_sandbox/medit/cases", "POST", "control.medit_add", self.c_medit_add),
            ("/_sandbox/medit/cases/<case_uuid>/move", "POST", "control.medit_move", self.c_medit_move),
            ("/_sandbox/medit/cases/<case_uuid>", "DELETE", "control.medit_delete", self.c_medit_delete),
            ("/_sandbox/medit/webhook", "POST", "control.medit_webhook", self.c_medit_webhook),
            ("/_sandbox/medit/webhook/flush", "POST", "control.medit_flush", self.c_medit_flush),
        ]
        super().__init__(routes)
        self.endpoints = sorted(name for name in self.handlers if not name.startswith("control."))

    def before(self, name: str, request: Request) -> None:
        """Log the request and play a fault set for its endpoint (the control API has neither)."""
        if name.startswith("control."):
            return
        request.sandbox_entry = self.core.log_request(name, request)
        fault = self.core.take_fault(name)
        if fault is not None and fault["kind"] == "hang":
            self.stopping.wait(fault["seconds"])
        elif fault is not None:
            raise ApiError(int(fault["kind"]), f"injected fault {fault['kind']}",
                           headers={"Retry-After": str(fault["retry_after"])} if fault["kind"] == "429" else {})

    def after(self, name: str, request: Request, response: Response) -> None:
        entry = getattr(request, "sandbox_entry", None)
        if entry is not None:
            with self.core.lock:
                entry["status"] = response.status_code

    def reset(self) -> None:
        with self.core.lock:
            self.core.reset()
            self.itero.reset()
            self.medit.reset()
        self.core.courier.clear()

    # --- control API ---
    def c_reset(self, request: Request) -> Response:
        self.reset()
        return json_response({"reset": True})

    def c_config(self, request: Request) -> Response:
        if request.method == "POST":
            return json_response(self.core.configure(json_body(request)))
        with self.core.lock:
            return json_response(self.core.config)

    def c_clients(self, request: Request) -> Response:
        body = json_body(request)
        redirect_uris = body.get("redirect_uris") or []
        if not isinstance(redirect_uris, list):
            raise ApiError(400, "redirect_uris must be a list")
        self.core.add_client(str(body.get("vendor", "")), str(body.get("client_id", "")),
                             str(body.get("client_secret", "")), redirect_uris)
        return json_response({"vendor": body["vendor"], "client_id": body["client_id"]}, 201)

    def c_expire(self, request: Request) -> Response:
        vendor = (request.get_json(silent=True) or {}).get("vendor")
        return json_response({"expired": self.core.expire_tokens(vendor)})

    def c_faults(self, request: Request) -> Response:
        body = json_body(request)
        endpoint = body.get("endpoint")
        if endpoint not in self.endpoints:
            raise ApiError(400, f"endpoint must be one of {', '.join(self.endpoints)}")
        self.core.add_fault(endpoint, body.get("kind", ""), body.get("count", 1), body.get("retry_after", 1),
                            body.get("seconds", 1.0))
        return json_response({"endpoint": endpoint}, 201)

    def c_clear_faults(self, request: Request) -> Response:
        with self.core.lock:
            self.core.faults.clear()
        return Response(status=204)

    def c_counters(self, request: Request) -> Response:
        with self.core.lock:
            return json_response(dict(self.core.counters))

    def c_requests(self, request: Request) -> Response:
        endpoint = request.args.get("endpoint")
        with self.core.lock:
            return json_response([r for r in self.core.requests if endpoint in (None, r["endpoint"])])

    def c_deliveries(self, request: Request) -> Response:
        with self.core.courier.cond:
            sent = list(self.core.courier.sent)
        return json_response(sent)

    def c_itero_list(self, request: Request) -> Response:
        return json_response(self.itero.snapshot()["orders"])

    def c_itero_add(self, request: Request) -> Response:
        return json_response(self.itero.add_order(json_body(request)), 201)

    def c_itero_move(self, request: Request, order_id: str) -> Response:
        body = json_body(request)
        return json_response(self.itero.move(order_id, str(body.get("to", "")), bool(body.get("new_assets"))))

    def c_itero_scan(self, request: Request, rx_id: str) -> Response:
        body = request.get_json(silent=True) or {}
        return json_response(self.itero.scan_rx(rx_id, body.get("status", "ready")), 201)

    def c_itero_pairings(self, request: Request) -> Response:
        return json_response(self.itero.snapshot()["pairings"])

    def c_medit_add(self, request: Request) -> Response:
        return json_response(self.medit.add_case(json_body(request)), 201)

    def c_medit_move(self, request: Request, case_uuid: str) -> Response:
        body = json_body(request)
        return json_response(self.medit.move(case_uuid, body.get("status"), bool(body.get("new_files")),
                                             body.get("upload_status")))

    def c_medit_delete(self, request: Request, case_uuid: str) -> Response:
        self.medit.delete_case(case_uuid)
        return Response(status=204)

    def c_medit_webhook(self, request: Request) -> Response:
        body = json_body(request)
        self.medit.set_webhook(str(body.get("url") or ""), str(body.get("secret") or ""),
                               bool(body.get("duplicate")), bool(body.get("hold")))
        return json_response({"url": body.get("url") or ""})

    def c_medit_flush(self, request: Request) -> Response:
        body = request.get_json(silent=True) or {}
        return json_response({"sent": self.medit.flush(bool(body.get("reverse")))})


DEMO_PROCEDURES = [("Crown", ["36"]), ("Bridge", ["14", "15", "16"]), ("Implant crown", ["46"]),
                   ("Veneer", ["11", "21"]), ("Inlay / onlay", ["26"]), ("Crown", ["11"])]
DEMO_PATIENTS = ["Ava,Thompson,DEMO-1001,1984-03-12", "Liam,Patel,DEMO-1002,1979-11-02",
                 "Sofia,Garcia,DEMO-1003,1992-07-25"]
NEW_EVERY = int(os.environ.get("VENDOR_DEMO_NEW_EVERY", "10"))  # steps between two new scans
CEILING = int(os.environ.get("VENDOR_DEMO_MAX_SCANS", "12"))  # new scans in one run at most


def parse_patient(text: str) -> dict:
    """"First,Last,Chart,YYYY-MM-DD" as a patient (the date may be left out)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"a demo patient is First,Last,Chart,YYYY-MM-DD, not {text!r}")
    parts += [""] * (4 - len(parts))
    if parts[3]:
        dt.date.fromisoformat(parts[3])
    return {"first_name": parts[0], "last_name": parts[1], "chart_number": parts[2], "date_of_birth": parts[3] or None}


class Demo:
    """Fills the demo inbox over time at a practice's pace (see the module's docstring).

    Every `step` seconds the oldest order still in a flow takes its next move; a new scan comes
    only every `new_every` steps (every 5 minutes at the default 30 s step: a busy practice's
    chairs, not a scan every half minute), and no more than `ceiling` new scans in one run, so the
    Draft column holds what a coordinator would see in a day, not sixty drafts an hour. The first
    scans show what the tour needs: an iTero scan of the last patient given (make run gives
    someone the practice knows only under another birth date: matching asks to confirm), then a
    Medit case, then an iTero milling flow (Lab Review, iTero Milling, Ready to Ship, Downloaded,
    which a strict vendor never lists: the portal re-reads it by Rx id).
    """

    def __init__(self, itero: Itero, medit: Medit, patients: list[dict], step: float,
                 new_every: int = NEW_EVERY, ceiling: int = CEILING):
        self.itero, self.medit, self.patients, self.step = itero, medit, patients, step
        self.new_every, self.ceiling = max(new_every, 1), ceiling
        self.flows: collections.deque[tuple[str, str, list[str]]] = collections.deque()  # vendor, id, moves left
        self.turn = itertools.cycle(["medit", "itero"])  # after the opening's iTero, Medit, iTero
        self.random = random.Random()
        self.steps = 0
        self.made = 0
        # (vendor, patient, iTero flow) of the first scans; then chosen at random.
        self.opening = collections.deque([("itero", patients[-1], "direct"), ("medit", patients[0], ""),
                                          ("itero", patients[0], "milling")])

    def run(self, stopping: threading.Event) -> None:
        """A first step at once (the inbox is not empty for long), then one every `step` seconds."""
        while not stopping.is_set():
            try:
                self.tick()
            except ApiError as exc:  # an order the demo was moving was pruned, say
                log.warning("demo step skipped: %s", exc.message)
            stopping.wait(self.step)

    def tick(self) -> None:
        self.steps += 1
        if self.flows:
            vendor, item_id, moves = self.flows[0]
            move = moves.pop(0)
            if vendor == "itero":
                order = self.itero.move(item_id, move)
                log.info("demo: iTero order %s is now %s", item_id, order["status"])
            else:
                case = self.medit.move(item_id, status=move, upload_status="SUCCEED")
                log.info("demo: Medit case %s is now %s", case["name"], case["status"])
            if not moves:
                self.flows.popleft()
        if self.made >= self.ceiling or (self.steps - 1) % self.new_every:
            return
        self.made += 1
        procedure, teeth = self.random.choice(DEMO_PROCEDURES)
        if self.opening:
            vendor, patient, flow = self.opening.popleft()
        else:
            vendor, patient = next(self.turn), self.random.choice(self.patients)
            flow = self.random.choice(list(ITERO_FLOWS))
        if vendor == "itero":
            order = self.itero.add_order({"patient": patient, "procedure": procedure, "teeth": teeth,
                                          "doctor": self.random.choice(ITERO_DOCTORS)})
            log.info("demo: new iTero order %s for %s %s (%s, flow %s)", order["order_id"], patient["first_name"],
                     patient["last_name"], procedure, flow)
            if ITERO_FLOWS[flow]:
                self.flows.append(("itero", order["order_id"], list(ITERO_FLOWS[flow])))
        else:
            case = self.medit.add_case({"patient": patient, "status": "SCAN", "upload_status": "STARTED"})
            log.info("demo: new Medit case %s", case["name"])
            self.flows.append(("medit", case["uuid"], self.random.choice([["COMPLETED"], ["CAD", "COMPLETED"]])))


class Sandbox:
    """The sandbox in a thread, for tests and `python -m sandbox.vendors`.

    `Sandbox().start()` listens on a free loopback port; `.url` is its root (the iTero base URL and OAuth
    base are `.itero_url` and `.itero_oauth`, Medit's hosts are both `.medit_url`); `.stop()` ends it.
    The methods below are the control API without HTTP; `.core`, `.itero` and `.medit` are the state.
    """

    def __init__(self, host: str = HOST, port: int = 0):
        self.courier = Courier()
        self.core = Core(self.courier)
        self.itero = Itero(self.core)
        self.medit = Medit(self.core)
        self.stopping = threading.Event()
        self.app = SandboxApp(self.core, self.itero, self.medit, self.stopping)
        self.host, self.port = host, port
        self.server = None
        self.threads: list[threading.Thread] = []

    def start(self) -> Sandbox:
        self.server = Server(self.app, self.host, self.port, name="vendor-sandbox").start()
        self.threads = [threading.Thread(target=self.courier.run, daemon=True, name="vendor-sandbox-courier")]
        for thread in self.threads:
            thread.start()
        return self

    def start_demo(self, patients: list[dict], step: float = STEP, medit_webhook_url: str = "",
                   new_every: int = NEW_EVERY, ceiling: int = CEILING) -> Demo:
        """Demo mode: the demo clients, the Medit webhook (if a URL is given) and the steps."""
        self.add_client("itero", ITERO_DEMO_CLIENT_ID, ITERO_DEMO_CLIENT_SECRET)
        self.add_client("medit", MEDIT_DEMO_CLIENT_ID, MEDIT_DEMO_CLIENT_SECRET)
        if medit_webhook_url:
            self.medit.set_webhook(medit_webhook_url, MEDIT_DEMO_WEBHOOK_SECRET)
        demo = Demo(self.itero, self.medit, patients, step, new_every, ceiling)
        thread = threading.Thread(target=demo.run, args=(self.stopping,), daemon=True, name="vendor-sandbox-demo")
        thread.start()
        self.threads.append(thread)
        return demo

    def stop(self) -> None:
        self.stopping.set()  # also lets hanging requests go
        self.courier.stop()
        if self.server is not None:
            self.server.stop()
        for thread in self.threads:
            thread.join(timeout=5)
        self.courier.client.close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def itero_url(self) -> str:
        return f"{self.url}/itero"

    @property
    def itero_oauth(self) -> str:
        return f"{self.url}/itero/oauth"

    @property
    def medit_url(self) -> str:
        return f"{self.url}/medit"

    # --- control, without HTTP ---
    def reset(self) -> None:
        self.app.reset()

    def configure(self, **changes) -> dict:
        return self.core.configure(changes)

    def add_client(self, vendor: str, client_id: str, client_secret: str, redirect_uris=()) -> None:
        self.core.add_client(vendor, client_id, client_secret, redirect_uris)

    def expire_tokens(self, vendor: str | None = None) -> int:
        return self.core.expire_tokens(vendor)

    def fault(self, endpoint: str, kind: str | int, count: int = 1, retry_after: int = 1,
              seconds: float = 1.0) -> None:
        if endpoint not in self.app.endpoints:
            raise ApiError(400, f"endpoint must be one of {', '.join(self.app.endpoints)}")
        self.core.add_fault(endpoint, str(kind), count, retry_after, seconds)

    @property
    def counters(self) -> dict:
        with self.core.lock:
            return dict(self.core.counters)

    def requests(self, endpoint: str | None = None) -> list[dict]:
        with self.core.lock:
            return [dict(r) for r in self.core.requests if endpoint in (None, r["endpoint"])]

    def deliveries(self) -> list[dict]:
        with self.courier.cond:
            return list(self.courier.sent)

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every callback and webhook queued so far has been tried."""
        return self.courier.drain(timeout)

    def add_itero_order(self, **spec) -> dict:
        return self.itero.add_order(spec)

    def move_itero_order(self, order_id: str, to: str, new_assets: bool = False) -> dict:
        return self.itero.move(order_id, to, new_assets)

    def scan_rx(self, rx_id: str, status: str = "ready") -> dict:
        return self.itero.scan_rx(rx_id, status)

    def add_medit_case(self, **spec) -> dict:
        return self.medit.add_case(spec)

    def move_medit_case(self, case_uuid: str, status: str | None = None, new_files: bool = False,
                        upload_status: str | None = None) -> dict:
        return self.medit.move(case_uuid, status, new_files, upload_status)

    def delete_medit_case(self, case_uuid: str) -> None:
        self.medit.delete_case(case_uuid)

    def set_medit_webhook(self, url: str, secret: str, duplicate: bool = False, hold: bool = False) -> None:
        self.medit.set_webhook(url, secret, duplicate, hold)

    def flush_medit_webhooks(self, reverse: bool = False) -> int:
        return self.medit.flush(reverse)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.vendors", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--demo", action="store_true", help="register the demo clients and fill the inbox over time")
    parser.add_argument("--patient", action="append", default=[], metavar="FIRST,LAST,CHART,YYYY-MM-DD",
                        help="a demo patient (repeatable; else VENDOR_DEMO_PATIENTS, ';' between patients)")
    parser.add_argument("--step", type=float, default=STEP, help="seconds between demo steps")
    parser.add_argument("--new-every", type=int, default=NEW_EVERY, help="demo steps between two new scans")
    parser.add_argument("--max-scans", type=int, default=CEILING, help="new demo scans in one run at most")
    parser.add_argument("--strict", action="store_true",
                        help="iTero read strictly: Bearer on discovery, pages from 0, Get Orders lists only "
                             "Completed / Ready for Download and Lab Review")
    parser.add_argument("--medit-webhook", default=os.environ.get("VENDOR_DEMO_MEDIT_WEBHOOK_URL", ""),
                        help="where demo Medit webhooks go (signed with MEDIT_DEMO_WEBHOOK_SECRET)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="vendor-sandbox: %(message)s")
    texts = args.patient or [p for p in os.environ.get("VENDOR_DEMO_PATIENTS", "").split(";") if p.strip()] \
        or DEMO_PATIENTS
    try:
        patients = [parse_patient(text) for text in texts]
    except ValueError as exc:
        parser.error(str(exc))
    sandbox = Sandbox(args.host, args.port).start()
    if args.strict:
        sandbox.configure(strict=True)
    if args.demo:
        sandbox.start_demo(patients, args.step, args.medit_webhook, args.new_every, args.max_scans)
    log.info("iTero at %s (OAuth %s), Medit Link at %s, control at %s/_sandbox%s", sandbox.itero_url,
             sandbox.itero_oauth, sandbox.medit_url, sandbox.url,
             f"; demo step every {args.step}s for {len(patients)} patient(s)" if args.demo else "")
    serve_until_stopped(sandbox.stop)


if __name__ == "__main__":
    main()
