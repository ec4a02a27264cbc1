"""The vendor sandbox behaves like the iTero and Medit Link contracts, driven over HTTP as an adapter
would drive it; adapter tests built on it mean something only if this holds."""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from sandbox import vendors as vs
from sandbox.vendors import Sandbox

ITERO_ID, ITERO_SECRET = "practice-app", "practice-secret"
MEDIT_ID, MEDIT_SECRET = "M" * 32, "S" * 32
REDIRECT = "http://127.0.0.1:9/oauth/callback"
ACCOUNT = vs.ITERO_ACCOUNTS[0]["account_id"]


class Receiver:
    """A tiny HTTP server on loopback that keeps every POST it gets (the practice's callback URL)."""

    def __init__(self):
        self.posts: list[dict] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.cond:
                    receiver.posts.append({"path": self.path, "raw": raw, "json": json.loads(raw),
                                           "headers": {k.lower(): v for k, v in self.headers.items()}})
                    receiver.cond.notify_all()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def wait(self, count: int, timeout: float = 5.0) -> list[dict]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.posts) >= count, timeout)
            return list(self.posts)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def running():
    sandbox = Sandbox().start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def sandbox(running):
    running.reset()
    running.add_client("itero", ITERO_ID, ITERO_SECRET, [REDIRECT])
    running.add_client("medit", MEDIT_ID, MEDIT_SECRET, [REDIRECT])
    return running


@pytest.fixture
def http(sandbox):
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:
        yield client


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def code_from(response: httpx.Response, state: str) -> str:
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == [state]
    return query["code"][0]


def itero_login(http) -> dict:
    code = code_from(http.get("/itero/oauth/authorize", params={
        "client_id": ITERO_ID, "redirect_uri": REDIRECT, "response_type": "code", "state": "s1"}), "s1")
    response = http.post("/itero/oauth/token", auth=(ITERO_ID, ITERO_SECRET), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT})
    assert response.status_code == 200, response.text
    return response.json()


def itero_paired(http, callback_url: str = "") -> tuple[dict, dict]:
    """Log in, discover, pair: the endpoints and the account's token set."""
    tokens = itero_login(http)
    endpoints = http.get("/itero/discovery").json()["endpoints"]
    response = http.post(endpoints["pair"], headers=bearer(tokens),
                         json={"account_id": ACCOUNT, "callback_url": callback_url})
    assert response.status_code == 200, response.text
    return endpoints, response.json()


def bearer(tokens: dict) -> dict:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def refresh(http, tokens: dict, vendor: str = "itero", auth=(ITERO_ID, ITERO_SECRET)) -> httpx.Response:
    return http.post(f"/{vendor}/oauth/token", auth=auth,
                     data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})


# --- iTero: OAuth ---

def test_authorization_code_gives_a_token_set_once(sandbox, http):
    tokens = itero_login(http)
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600
    assert tokens["access_token"] and tokens["refresh_token"]
    assert http.get("/itero/api/accounts", headers=bearer(tokens)).json()["accounts"][0]["account_id"] == ACCOUNT

    code = code_from(http.get("/itero/oauth/authorize", params={
        "client_id": ITERO_ID, "redirect_uri": REDIRECT, "state": "s2"}), "s2")
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    wrong = http.post("/itero/oauth/token", auth=(ITERO_ID, "not-the-secret"), data=form)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert http.post("/itero/oauth/token", data=form).status_code == 401  # no Basic auth
    assert http.post("/itero/oauth/token", auth=(ITERO_ID, ITERO_SECRET), data=form).status_code == 200
    again = http.post("/itero/oauth/token", auth=(ITERO_ID, ITERO_SECRET), data=form)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_authorize_refuses_an_unregistered_redirect_or_client(sandbox, http):
    other = http.get("/itero/oauth/authorize", params={"client_id": ITERO_ID, "redirect_uri": "http://127.0.0.1/x"})
    assert other.status_code == 400 and "not registered" in other.json()["error"]
    assert http.get("/itero/oauth/authorize", params={"client_id": "nobody", "redirect_uri": REDIRECT}).status_code == 400


def test_refresh_rotates_the_refresh_token_and_the_old_one_stops_working(sandbox, http):
    tokens = itero_login(http)
    first = refresh(http, tokens)
    assert first.status_code == 200
    fresh = first.json()
    assert fresh["refresh_token"] != tokens["refresh_token"]
    assert fresh["access_token"] != tokens["access_token"]

    reused = refresh(http, tokens)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert refresh(http, fresh).status_code == 200
    assert sandbox.counters["itero.refresh"] == 3
    assert sandbox.counters["itero.refresh_refused"] == 1
    assert sandbox.counters["itero.token"] == 4  # the code exchange and three refreshes


def test_two_refreshes_racing_with_one_refresh_token_get_one_new_token_set(sandbox, http):
    tokens = itero_login(http)
    barrier, answers = threading.Barrier(2), []

    def race():
        with httpx.Client(base_url=sandbox.url, timeout=5) as client:
            barrier.wait()
            answers.append(refresh(client, tokens).status_code)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [200, 400]
    assert sandbox.counters["itero.refresh"] == 2 and sandbox.counters["itero.refresh_refused"] == 1


def test_expired_and_unknown_tokens_get_401_and_a_refresh_mends_it(sandbox, http):
    sandbox.configure(token_ttl=120)
    tokens = itero_login(http)
    assert tokens["expires_in"] == 120
    assert sandbox.expire_tokens("itero") == 1
    expired = http.get("/itero/api/accounts", headers=bearer(tokens))
    assert expired.status_code == 401 and "expired" in expired.json()["error"]
    assert http.get("/itero/api/accounts", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    assert http.get("/itero/api/accounts").status_code == 401
    renewed = refresh(http, tokens).json()
    assert http.get("/itero/api/accounts", headers=bearer(renewed)).status_code == 200


def test_revoke_logs_out(sandbox, http):
    tokens = itero_login(http)
    assert http.post("/itero/oauth/revoke", data={"token": tokens["access_token"]}).status_code == 200
    assert http.get("/itero/api/accounts", headers=bearer(tokens)).status_code == 401
    assert http.post("/itero/oauth/revoke", data={"token": tokens["refresh_token"]}).status_code == 200
    assert refresh(http, tokens).status_code == 400


# --- iTero: discovery and pairing ---

def test_discovery_names_every_endpoint_on_its_own_host_unless_told_otherwise(sandbox, http):
    body = http.get("/itero/discovery").json()
    assert body["region"] == "us"
    endpoints = body["endpoints"]
    assert set(endpoints) >= {"accounts", "pair", "unpair", "practice_configuration", "scan_request", "orders",
                              "order_by_rx", "download", "return_to_doctor"}
    assert {urlsplit(url).netloc for url in endpoints.values()} == {urlsplit(sandbox.url).netloc}
    assert "{rx_id}" in endpoints["order_by_rx"]
    assert "{order_id}" in endpoints["download"] and "{asset}" in endpoints["download"]
    assert "{order_id}" in endpoints["return_to_doctor"]

    sandbox.configure(foreign_host="attacker.example")
    foreign = http.get("/itero/discovery").json()["endpoints"]
    assert urlsplit(foreign["orders"]).netloc == "attacker.example"
    assert urlsplit(foreign["accounts"]).netloc == urlsplit(sandbox.url).netloc


def test_only_a_paired_token_reaches_the_practice_and_unpair_ends_it(sandbox, http):
    tokens = itero_login(http)
    endpoints = http.get("/itero/discovery").json()["endpoints"]
    assert http.get(endpoints["orders"], headers=bearer(tokens)).status_code == 403
    assert http.post(endpoints["pair"], headers=bearer(tokens), json={"account_id": "999"}).status_code == 404
    assert http.post(endpoints["pair"], headers=bearer(tokens), json={}).status_code == 400
    paired = http.post(endpoints["pair"], headers=bearer(tokens),
                       json={"account_id": ACCOUNT, "callback_url": "http://127.0.0.1:9/cb/secret-token"}).json()
    assert paired["access_token"] != tokens["access_token"] and paired["refresh_token"]
    assert sandbox.itero.snapshot()["pairings"][ACCOUNT]["callback_url"] == "http://127.0.0.1:9/cb/secret-token"
    config = http.get(endpoints["practice_configuration"], headers=bearer(paired)).json()
    assert config["doctors"][0]["doctor_id"] and config["scanners"][0]["serial"]
    # a refreshed account token stays bound to the account
    assert http.get(endpoints["orders"], headers=bearer(refresh(http, paired).json())).status_code == 200

    assert http.post(endpoints["unpair"], headers=bearer(paired)).status_code == 200
    assert ACCOUNT not in sandbox.itero.snapshot()["pairings"]
    assert http.get(endpoints["orders"], headers=bearer(paired)).status_code == 401


def test_a_ready_order_calls_back_the_paired_account_with_rx_id_and_account_number(sandbox, http, receiver):
    endpoints, tokens = itero_paired(http, receiver.url("/callbacks/itero/tok123"))
    order = sandbox.add_itero_order(patient={"first_name": "Ava", "last_name": "Thompson",
                                             "chart_number": "C-1", "date_of_birth": "1984-03-12"})
    [post] = receiver.wait(1)
    assert post["path"] == "/callbacks/itero/tok123"
    assert post["json"] == {"rx_id": order["rx_id"], "account_number": ACCOUNT}

    fetched = http.get(endpoints["order_by_rx"].format(rx_id=order["rx_id"]), headers=bearer(tokens))
    assert fetched.status_code == 200 and fetched.json() == order
    assert http.get(endpoints["order_by_rx"].format(rx_id="nope"), headers=bearer(tokens)).status_code == 404

    sandbox.move_itero_order(order["order_id"], "milling")  # not a notifying status
    assert sandbox.drain()
    assert len(receiver.posts) == 1
    assert sandbox.deliveries()[0]["status"] == 204


def test_with_callbacks_off_nothing_is_sent_and_polling_still_sees_the_order(sandbox, http, receiver):
    sandbox.configure(callbacks=False)
    endpoints, tokens = itero_paired(http, receiver.url())
    order = sandbox.add_itero_order()
    assert sandbox.drain()
    assert receiver.posts == [] and sandbox.deliveries() == []
    listed = http.get(endpoints["orders"], headers=bearer(tokens)).json()["orders"]
    assert [o["order_id"] for o in listed] == [order["order_id"]]


# --- iTero: orders ---

def test_an_order_has_the_contract_shape(sandbox, http):
    endpoints, tokens = itero_paired(http)
    sandbox.add_itero_order(patient={"first_name": "Liam", "last_name": "Patel", "chart_number": "C-2",
                                     "date_of_birth": "1979-11-02"}, teeth=["14", "15", "16"], procedure="Bridge")
    [order] = http.get(endpoints["orders"], headers=bearer(tokens)).json()["orders"]
    assert set(order) >= {"order_id", "rx_id", "status", "updated_at", "patient", "doctor", "procedure", "teeth",
                          "lab", "assets", "history"}
    assert order["status"] == "Completed"
    assert order["patient"] == {"first_name": "Liam", "last_name": "Patel", "chart_number": "C-2",
                                "date_of_birth": "1979-11-02"}
    assert set(order["doctor"]) == {"doctor_id", "name"} and set(order["lab"]) == {"lab_id", "name"}
    assert order["teeth"] == ["14", "15", "16"] and order["procedure"] == "Bridge"
    assert order["updated_at"].endswith("Z")
    assert order["history"] == [{"status": "Completed", "at": order["updated_at"]}]
    for asset in order["assets"]:
        assert set(asset) == {"asset_id", "kind", "file_name", "format", "size_bytes", "jaw"}
    assert {(a["kind"], a["format"], a["jaw"]) for a in order["assets"]} == {
        ("IDE", "STL", "upper"), ("IDE", "STL", "lower"), ("IDE", "STL", "bite"), ("IMAGE_GALLERY", "ZIP", None)}


def test_orders_page_and_filter_by_updated_since(sandbox, http):
    sandbox.configure(page_size=2)
    endpoints, tokens = itero_paired(http)
    made = [sandbox.add_itero_order(teeth=[str(11 + n)]) for n in range(5)]
    sandbox.add_itero_order(account_id=vs.ITERO_ACCOUNTS[1]["account_id"])  # another account's: never listed

    pages, page = [], 1
    while True:
        body = http.get(endpoints["orders"], params={"page": page}, headers=bearer(tokens)).json()
        assert body["page"] == page
        pages.append([o["order_id"] for o in body["orders"]])
        if not body["has_more"]:
            break
        page += 1
    assert pages == [[made[0]["order_id"], made[1]["order_id"]], [made[2]["order_id"], made[3]["order_id"]],
                     [made[4]["order_id"]]]

    since = made[3]["updated_at"]
    recent = http.get(endpoints["orders"], params={"updated_since": since}, headers=bearer(tokens)).json()
    assert [o["order_id"] for o in recent["orders"]] == [made[3]["order_id"], made[4]["order_id"]]
    assert recent["has_more"] is False

    moved = sandbox.move_itero_order(made[0]["order_id"], "lab_review")
    later = http.get(endpoints["orders"], params={"updated_since": made[4]["updated_at"]}, headers=bearer(tokens))
    assert [o["order_id"] for o in later.json()["orders"]] == [made[4]["order_id"], moved["order_id"]]

    assert http.get(endpoints["orders"], params={"updated_since": "yesterday"}, headers=bearer(tokens)).status_code == 400
    assert http.get(endpoints["orders"], params={"page": "0"}, headers=bearer(tokens)).status_code == 400
    assert http.get(endpoints["orders"], params={"page": "x"}, headers=bearer(tokens)).status_code == 400


def test_the_milling_flow_keeps_the_order_id_and_builds_its_history(sandbox, http, receiver):
    endpoints, tokens = itero_paired(http, receiver.url())
    order = sandbox.add_itero_order()
    stamps = [order["updated_at"]]
    for step in vs.ITERO_FLOWS["milling"]:
        order = sandbox.move_itero_order(order["order_id"], step)
        stamps.append(order["updated_at"])
    fetched = http.get(endpoints["order_by_rx"].format(rx_id=order["rx_id"]), headers=bearer(tokens)).json()
    assert fetched["status"] == "Downloaded"
    assert [h["status"] for h in fetched["history"]] == [
        "Completed", "iTero Modeling", "Lab Review", "iTero Milling", "Ready to Ship", "Downloaded"]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    # callbacks where iTero sends them: the first scan and Lab Review
    posts = receiver.wait(2)
    assert sandbox.drain()
    assert len(receiver.posts) == 2 and all(p["json"]["rx_id"] == order["rx_id"] for p in posts)


def test_a_rescan_brings_the_same_order_back_completed_with_new_files(sandbox, http, receiver):
    endpoints, tokens = itero_paired(http, receiver.url())
    first = sandbox.add_itero_order()
    returned = http.post(endpoints["return_to_doctor"].format(order_id=first["order_id"]), headers=bearer(tokens),
                         json={"reason": "margin not visible on 36"})
    assert returned.status_code == 200 and returned.json()["status"] == "Scanning"
    assert sandbox.itero.snapshot()["orders"][0]["returns"] == ["margin not visible on 36"]
    again = http.post(endpoints["return_to_doctor"].format(order_id=first["order_id"]), headers=bearer(tokens),
                      json={"reason": "twice"})
    assert again.status_code == 409
    assert http.post(endpoints["return_to_doctor"].format(order_id=first["order_id"]), headers=bearer(tokens),
                     json={}).status_code == 400
    assert http.post(endpoints["return_to_doctor"].format(order_id="404"), headers=bearer(tokens),
                     json={"reason": "x"}).status_code == 404

    rescanned = sandbox.move_itero_order(first["order_id"], "ready")
    assert rescanned["order_id"] == first["order_id"] and rescanned["status"] == "Completed"
    assert rescanned["updated_at"] > returned.json()["updated_at"]
    assert not {a["asset_id"] for a in rescanned["assets"]} & {a["asset_id"] for a in first["assets"]}
    assert [h["status"] for h in rescanned["history"]] == ["Completed", "Scanning", "Completed"]
    assert len(receiver.wait(2)) == 2  # the first scan and the rescan

    both = sandbox.move_itero_order(first["order_id"], "rescan")  # the two steps at once
    assert [h["status"] for h in both["history"]][-2:] == ["Scanning", "Completed"]
    assert not {a["asset_id"] for a in both["assets"]} & {a["asset_id"] for a in rescanned["assets"]}


def test_interpretation_two_and_lab_side_statuses(sandbox):
    order = sandbox.add_itero_order(status="ready_for_download")
    assert order["status"] == "Ready for Download"
    for step in vs.ITERO_FLOWS["interpretation2"]:
        order = sandbox.move_itero_order(order["order_id"], step)
    assert [h["status"] for h in order["history"]] == [
        "Ready for Download", "iTero Modeling", "Lab Review", "iTero Modeling", "Lab Review", "iTero Milling",
        "Ready to Ship", "Downloaded"]
    with pytest.raises(vs.ApiError) as bad:
        sandbox.move_itero_order(order["order_id"], "teleported")
    assert bad.value.status == 400


def test_scan_request_creates_an_rx_that_can_be_deleted_until_it_is_scanned(sandbox, http, receiver):
    endpoints, tokens = itero_paired(http, receiver.url())
    doctor = http.get(endpoints["practice_configuration"], headers=bearer(tokens)).json()["doctors"][0]["doctor_id"]
    rx = {"patient": {"first_name": "Sofia", "last_name": "Garcia", "chart_number": "C-3",
                      "date_of_birth": "1992-07-25"},
          "doctor_id": doctor, "procedure": "Crown", "teeth": ["36"], "due_date": "2030-01-10",
          "notes": "shade A2", "lab_name": "Keystone Digital Lab"}
    created = http.post(endpoints["scan_request"], headers=bearer(tokens), json=rx)
    assert created.status_code == 200
    rx_id = created.json()["rx_id"]
    assert http.get(endpoints["order_by_rx"].format(rx_id=rx_id), headers=bearer(tokens)).status_code == 404
    assert http.delete(f"{endpoints['scan_request']}/{rx_id}", headers=bearer(tokens)).status_code == 204
    assert http.delete(f"{endpoints['scan_request']}/{rx_id}", headers=bearer(tokens)).status_code == 404

    rx_id = http.post(endpoints["scan_request"], headers=bearer(tokens), json=rx).json()["rx_id"]
    order = sandbox.scan_rx(rx_id)
    assert receiver.wait(1)[0]["json"] == {"rx_id": rx_id, "account_number": ACCOUNT}
    fetched = http.get(endpoints["order_by_rx"].format(rx_id=rx_id), headers=bearer(tokens)).json()
    assert fetched["order_id"] == order["order_id"] and fetched["lab"]["name"] == "Keystone Digital Lab"
    assert fetched["patient"]["chart_number"] == "C-3" and fetched["due_date"] == "2030-01-10"
    refused = http.delete(f"{endpoints['scan_request']}/{rx_id}", headers=bearer(tokens))
    assert refused.status_code == 409 and "scan" in refused.json()["error"]

    for broken, word in [({**rx, "teeth": ["99"]}, "FDI"), ({**rx, "doctor_id": "DR-0"}, "doctor_id"),
                         ({**rx, "patient": {"first_name": "A"}}, "last_name"), ({**rx, "procedure": ""}, "procedure"),
                         ({**rx, "due_date": "soon"}, "due_date")]:
        response = http.post(endpoints["scan_request"], headers=bearer(tokens), json=broken)
        assert response.status_code == 400 and word in response.json()["error"]
    assert http.post(endpoints["scan_request"], headers=bearer(tokens), content=b"not json").status_code == 400


def test_download_is_a_zip_of_the_scan_files_and_metadata(sandbox, http):
    endpoints, tokens = itero_paired(http)
    order = sandbox.add_itero_order()
    response = http.get(endpoints["download"].format(order_id=order["order_id"], asset="ide"), headers=bearer(tokens))
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    meshes = {a["file_name"]: a for a in order["assets"] if a["kind"] == "IDE"}
    assert set(archive.namelist()) == set(meshes) | {"metadata.json"}
    for name, asset in meshes.items():
        data = archive.read(name)
        assert len(data) == asset["size_bytes"]
        (triangles,) = struct.unpack_from("<I", data, 80)
        assert triangles > 0 and len(data) == 84 + 50 * triangles
        assert not data.startswith(b"solid")
    metadata = json.loads(archive.read("metadata.json"))
    assert metadata["order_id"] == order["order_id"]
    assert {f["jaw"] for f in metadata["files"]} == {"upper", "lower", "bite"}

    thumbs = http.get(endpoints["download"].format(order_id=order["order_id"], asset="thumbnails"),
                      headers=bearer(tokens))
    gallery = next(a for a in order["assets"] if a["kind"] == "IMAGE_GALLERY")
    assert len(thumbs.content) == gallery["size_bytes"]
    images = zipfile.ZipFile(io.BytesIO(thumbs.content))
    assert len(images.namelist()) == 3
    assert all(images.read(n).startswith(b"\x89PNG\r\n\x1a\n") for n in images.namelist())

    assert http.get(endpoints["download"].format(order_id=order["order_id"], asset="mesh"),
                    headers=bearer(tokens)).status_code == 400
    assert http.get(endpoints["download"].format(order_id="0", asset="ide"), headers=bearer(tokens)).status_code == 404


def test_given_assets_are_kept_and_served(sandbox, http):
    endpoints, tokens = itero_paired(http)
    order = sandbox.add_itero_order(assets=[{"file_name": "upper.ply", "format": "PLY", "jaw": "upper"}])
    [asset] = order["assets"]
    assert asset["kind"] == "IDE" and asset["asset_id"] and asset["size_bytes"] > 0
    archive = zipfile.ZipFile(io.BytesIO(http.get(endpoints["download"].format(
        order_id=order["order_id"], asset="ide"), headers=bearer(tokens)).content))
    assert archive.read("upper.ply").startswith(b"ply\nformat ascii 1.0")


# --- faults and the request log ---

def test_injected_faults_answer_429_with_retry_after_then_500_then_normally(sandbox, http):
    endpoints, tokens = itero_paired(http)
    sandbox.fault("itero.orders", 429, count=2, retry_after=7)
    sandbox.fault("itero.orders", 500)
    answers = [http.get(endpoints["orders"], headers=bearer(tokens)) for _ in range(4)]
    assert [a.status_code for a in answers] == [429, 429, 500, 200]
    assert answers[0].headers["retry-after"] == "7"
    assert sandbox.counters["itero.orders"] == 4
    with pytest.raises(vs.ApiError):
        sandbox.fault("itero.nothing", 500)


def test_a_hanging_endpoint_times_the_client_out(sandbox, http):
    sandbox.fault("itero.discovery", "hang", seconds=30)
    with pytest.raises(httpx.ReadTimeout):
        http.get("/itero/discovery", timeout=0.3)
    assert http.get("/itero/discovery").status_code == 200


def test_the_request_log_says_what_the_client_did(sandbox, http):
    endpoints, tokens = itero_paired(http)
    http.post(endpoints["scan_request"], headers=bearer(tokens), json={"procedure": "Crown"})
    [token_call] = sandbox.requests("itero.token")
    assert token_call["auth_scheme"] == "Basic" and token_call["body"]["grant_type"] == "authorization_code"
    [rx_call] = sandbox.requests("itero.scan_request")
    assert rx_call["method"] == "POST" and rx_call["auth"] is True
    assert rx_call["body"] == {"procedure": "Crown"} and rx_call["status"] == 400
    assert [r["endpoint"] for r in sandbox.requests()] == [
        "itero.authorize", "itero.token", "itero.discovery", "itero.pair", "itero.scan_request"]


# --- the control API over HTTP ---

def test_the_control_api_does_over_http_what_the_wrapper_does(sandbox, http):
    assert http.post("/_sandbox/clients", json={"vendor": "medit", "client_id": "short", "client_secret": "x"}
                     ).status_code == 400
    assert http.post("/_sandbox/config", json={"page_size": 3}).json()["page_size"] == 3
    assert http.post("/_sandbox/config", json={"page_sise": 3}).status_code == 400
    order = http.post("/_sandbox/itero/orders", json={"teeth": ["11"], "procedure": "Veneer"}).json()
    moved = http.post(f"/_sandbox/itero/orders/{order['order_id']}/move", json={"to": "lab_review"}).json()
    assert moved["status"] == "Lab Review"
    assert http.post(f"/_sandbox/itero/orders/{order['order_id']}/move", json={"to": "x"}).status_code == 400
    assert http.post("/_sandbox/itero/orders/0/move", json={"to": "ready"}).status_code == 404
    assert [o["order_id"] for o in http.get("/_sandbox/itero/orders").json()] == [order["order_id"]]
    assert http.post("/_sandbox/faults", json={"endpoint": "itero.discovery", "kind": "500"}).status_code == 201
    assert http.get("/itero/discovery").status_code == 500
    assert http.post("/_sandbox/faults", json={"endpoint": "itero.discovery", "kind": "500"}).status_code == 201
    assert http.delete("/_sandbox/faults").status_code == 204
    assert http.get("/itero/discovery").status_code == 200
    assert http.get("/_sandbox/counters").json()["itero.discovery"] == 2
    assert len(http.get("/_sandbox/requests", params={"endpoint": "itero.discovery"}).json()) == 2
    tokens = itero_login(http)
    assert http.post("/_sandbox/tokens/expire", json={}).json() == {"expired": 1}
    assert http.get("/itero/api/accounts", headers=bearer(tokens)).status_code == 401
    case = http.post("/_sandbox/medit/cases", json={"patient": {"name": "Ann Lee", "code": "C-9"}}).json()
    assert http.post(f"/_sandbox/medit/cases/{case['uuid']}/move", json={"status": "CAD"}).json()["status"] == "CAD"
    assert http.delete(f"/_sandbox/medit/cases/{case['uuid']}").status_code == 204
    assert http.post("/_sandbox/reset").status_code == 200
    assert sandbox.itero.snapshot()["orders"] == [] and sandbox.counters == {}


# --- Medit Link ---

def medit_login(http, scope: str = "USER GROUP CASE FILE offline_access") -> dict:
    code = code_from(http.get("/medit/oauth/authorize", params={
        "client_id": MEDIT_ID, "response_type": "code", "redirect_uri": REDIRECT, "scope": scope, "state": "m1"}),
        "m1")
    response = http.post("/medit/oauth/token", auth=(MEDIT_ID, MEDIT_SECRET), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT})
    assert response.status_code == 200, response.text
    return response.json()


def medit_headers(tokens: dict, group: bool = True) -> dict:
    headers = {"Authorization": f"Bearer {tokens['access_token']}", "x-meditlink-client-id": MEDIT_ID}
    if group:
        headers["x-meditlink-group-uuid"] = vs.MEDIT_USER["group"]["uuid"]
    return headers


def test_medit_oauth_with_offline_access_rotates_refresh_tokens(sandbox, http):
    tokens = medit_login(http)
    assert tokens["expires_in"] == 3600 and tokens["access_token"] and tokens["refresh_token"]
    renewed = refresh(http, tokens, "medit", (MEDIT_ID, MEDIT_SECRET))
    assert renewed.status_code == 200 and renewed.json()["refresh_token"] != tokens["refresh_token"]
    assert refresh(http, tokens, "medit", (MEDIT_ID, MEDIT_SECRET)).status_code == 400
    assert sandbox.counters["medit.refresh"] == 2 and sandbox.counters.get("itero.refresh", 0) == 0
    # an iTero token is no Medit token, and without offline_access there is no refresh token
    assert http.get("/medit/v1/me", headers={**medit_headers(itero_login(http), False)}).status_code == 401
    assert "refresh_token" not in medit_login(http, "USER GROUP CASE FILE")
    assert http.get("/medit/oauth/authorize", params={"client_id": MEDIT_ID, "redirect_uri": REDIRECT}
                    ).status_code == 400  # no response_type=code


def test_medit_me_and_the_headers_it_checks(sandbox, http):
    tokens = medit_login(http)
    me = http.get("/medit/v1/me", headers=medit_headers(tokens, group=False))
    assert me.status_code == 200 and me.json()["group"]["uuid"] == vs.MEDIT_USER["group"]["uuid"]
    no_client = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert http.get("/medit/v1/me", headers=no_client).status_code == 400
    assert http.get("/medit/v1/me", headers={**no_client, "x-meditlink-client-id": "X" * 32}).status_code == 401
    search = {"schema": "latest"}
    assert http.get("/medit/v1/cases/search", params=search, headers=medit_headers(tokens, False)).status_code == 400
    wrong_group = {**medit_headers(tokens), "x-meditlink-group-uuid": "someone-else"}
    assert http.get("/medit/v1/cases/search", params=search, headers=wrong_group).status_code == 403
    assert http.get("/medit/v1/cases/search", headers=medit_headers(tokens)).status_code == 400  # no schema
    sandbox.expire_tokens("medit")
    assert http.get("/medit/v1/me", headers=medit_headers(tokens, False)).status_code == 401


def test_medit_search_pages_from_zero_and_filters_on_date_updated(sandbox, http):
    tokens = medit_login(http)
    cases = [sandbox.add_medit_case(patient={"first_name": "P", "last_name": str(n), "chart_number": f"C-{n}"})
             for n in range(5)]

    def search(**params):
        response = http.get("/medit/v1/cases/search", params={"schema": "latest", **params},
                            headers=medit_headers(tokens))
        assert response.status_code == 200, response.text
        return response.json()

    first = search(size=2, page=0)
    assert first["totalPages"] == 3 and first["numberOfElements"] == 2
    last = search(size=2, page=2)
    assert last["numberOfElements"] == 1 and last["content"][0]["uuid"] == cases[4]["uuid"]
    seen = [c["uuid"] for p in range(3) for c in search(size=2, page=p)["content"]]
    assert seen == [c["uuid"] for c in cases]

    window = search(start=cases[1]["dateUpdated"], end=cases[3]["dateUpdated"])
    assert [c["uuid"] for c in window["content"]] == [c["uuid"] for c in cases[1:4]]
    moved = sandbox.move_medit_case(cases[0]["uuid"], status="CAD")
    assert [c["uuid"] for c in search(start=cases[4]["dateUpdated"] + 1)["content"]] == [moved["uuid"]]
    for bad in ({"size": "0"}, {"size": "101"}, {"page": "-1"}, {"start": "today"}):
        assert http.get("/medit/v1/cases/search", params={"schema": "latest", **bad},
                        headers=medit_headers(tokens)).status_code == 400


def test_medit_case_and_its_stl_file(sandbox, http):
    tokens = medit_login(http)
    made = sandbox.add_medit_case(patient={"first_name": "Ava", "last_name": "Thompson", "chart_number": "C-1"})
    case = http.get(f"/medit/v1/cases/{made['uuid']}", headers=medit_headers(tokens)).json()
    assert set(case) >= {"uuid", "name", "status", "patient", "files", "dateCreated", "dateUpdated"}
    assert case["status"] == "COMPLETED"
    assert case["patient"]["name"] == "Ava Thompson" and case["patient"]["code"] == "C-1" and case["patient"]["uuid"]
    assert [f["name"].split("-")[-1] for f in case["files"]] == ["UpperJawScan.stl", "LowerJawScan.stl",
                                                                 "BiteScan.stl"]
    assert {(f["fileType"], f["uploadStatus"]) for f in case["files"]} == {("SCAN_DATA", "SUCCEED")}

    upper = case["files"][0]
    link = http.get(f"/medit/v1/files/{upper['uuid']}", params={"type": "stl"}, headers=medit_headers(tokens)).json()
    assert link["uuid"] == upper["uuid"] and link["downloadFileName"].endswith(".zip")
    download = httpx.get(link["url"])  # a pre-signed link: no headers
    assert download.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    assert archive.namelist() == [upper["name"]]
    data = archive.read(upper["name"])
    assert len(data) == 84 + 50 * struct.unpack_from("<I", data, 80)[0]

    assert http.get(f"/medit/v1/files/{upper['uuid']}", headers=medit_headers(tokens)).status_code == 400
    assert http.get("/medit/v1/files/nope", params={"type": "stl"}, headers=medit_headers(tokens)).status_code == 404
    assert http.get("/medit/v1/cases/nope", headers=medit_headers(tokens)).status_code == 404
    assert httpx.get(link["url"] + "x").status_code == 404

    pending = sandbox.add_medit_case(status="SCAN", upload_status="STARTED")
    assert http.get(f"/medit/v1/files/{pending['files'][0]['uuid']}", params={"type": "stl"},
                    headers=medit_headers(tokens)).status_code == 409
    sandbox.delete_medit_case(pending["uuid"])
    assert http.get(f"/medit/v1/cases/{pending['uuid']}", headers=medit_headers(tokens)).status_code == 404


def test_medit_webhooks_are_signed_with_hmac_sha256_of_the_raw_body(sandbox, receiver):
    sandbox.set_medit_webhook(receiver.url("/webhooks/medit"), "whsec-test")
    case = sandbox.add_medit_case(status="SCAN", upload_status="STARTED")
    sandbox.move_medit_case(case["uuid"], status="COMPLETED", upload_status="SUCCEED")
    posts = receiver.wait(4)
    assert [p["headers"]["x-meditlink-event-code"] for p in posts] == [
        "case.created", "files.created", "files.upload.updated", "case.updated"]
    for post in posts:
        expected = hmac.new(b"whsec-test", post["raw"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(post["headers"]["x-meditlink-signature"], expected)
        assert post["json"]["schemaVersion"] == "2022-01-28" and isinstance(post["json"]["dateIssued"], int)
    assert posts[0]["json"]["case"]["uuid"] == case["uuid"] and posts[0]["json"]["case"]["status"] == "SCAN"
    assert {f["caseUuid"] for f in posts[1]["json"]["files"]} == {case["uuid"]}
    assert posts[3]["json"]["case"]["status"] == "COMPLETED"


def test_medit_webhooks_can_come_twice_or_out_of_order(sandbox, receiver):
    sandbox.set_medit_webhook(receiver.url(), "s", duplicate=True)
    case = sandbox.add_medit_case(files=[])
    posts = receiver.wait(2)
    assert sandbox.drain()
    assert len(receiver.posts) == 2 and posts[0]["raw"] == posts[1]["raw"]

    sandbox.set_medit_webhook(receiver.url(), "s", hold=True)
    sandbox.move_medit_case(case["uuid"], status="CAD")
    sandbox.move_medit_case(case["uuid"], status="COMPLETED")
    assert sandbox.drain() and len(receiver.posts) == 2
    assert sandbox.flush_medit_webhooks(reverse=True) == 2
    late = receiver.wait(4)[2:]
    assert [p["json"]["case"]["status"] for p in late] == ["COMPLETED", "CAD"]


def test_callbacks_go_only_to_loopback_unless_allowed(sandbox):
    sandbox.set_medit_webhook("http://203.0.113.9/hook", "s")
    sandbox.add_medit_case(files=[])
    assert sandbox.drain()
    assert sandbox.deliveries()[0]["status"] is None and "loopback" in sandbox.deliveries()[0]["error"]


# --- demo mode ---

def test_demo_steps_fill_the_inbox_and_move_older_orders(sandbox):
    patients = [vs.parse_patient("Ava,Thompson,C-1,1984-03-12"), vs.parse_patient("Liam,Patel")]
    demo = vs.Demo(sandbox.itero, sandbox.medit, patients, step=3600, new_every=1)  # a new scan every step
    for _ in range(12):
        demo.tick()
    orders, cases = sandbox.itero.snapshot()["orders"], list(sandbox.medit.cases.values())
    assert len(orders) == 6 and len(cases) == 6
    assert {o["patient"]["last_name"] for o in orders} | {c["patient"]["name"] for c in cases} <= {
        "Thompson", "Patel", "Ava Thompson", "Liam Patel"}
    assert any(len(o["history"]) > 1 for o in orders) or any(c["status"] != "SCAN" for c in cases)
    with pytest.raises(ValueError):
        vs.parse_patient("Onlyone")
    with pytest.raises(ValueError):
        vs.parse_patient("A,B,C,not-a-date")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_demo_command_serves_both_vendors_with_the_demo_clients():
    port = _free_port()
    env = dict(os.environ, VENDOR_DEMO_PATIENTS="Ava,Thompson,C-1,1984-03-12;Liam,Patel,C-2,1979-11-02")
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.vendors", "--port", str(port), "--demo",
                             "--step", "0.2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if len(httpx.get(f"{base}/_sandbox/itero/orders").json()) >= 1:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        orders = httpx.get(f"{base}/_sandbox/itero/orders").json()
        assert orders and orders[0]["patient"]["last_name"] in ("Thompson", "Patel")
        login = httpx.get(f"{base}/medit/oauth/authorize", params={
            "client_id": vs.MEDIT_DEMO_CLIENT_ID, "response_type": "code", "redirect_uri": REDIRECT})
        code = parse_qs(urlsplit(login.headers["location"]).query)["code"][0]
        token = httpx.post(f"{base}/medit/oauth/token", auth=(vs.MEDIT_DEMO_CLIENT_ID, vs.MEDIT_DEMO_CLIENT_SECRET),
                           data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT})
        assert token.status_code == 200
        assert httpx.get(f"{base}/itero/oauth/authorize", params={
            "client_id": vs.ITERO_DEMO_CLIENT_ID, "redirect_uri": REDIRECT}).status_code == 302
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
