"""The iTero adapter over real HTTP against the vendor sandbox (docs/vendors/itero.md): sign-in and
pairing, test connection, polling with pages and updated_since, the callback endpoint (docs/reliability.md W1, W4),
tokens refreshed once across workers (docs/reliability.md W7), the allow-list (W8), 429/500/401, malformed orders.
The docs/sources.md source 001 flows end to end are in test_itero_flows.py; the Rx in test_itero_rx.py."""
from __future__ import annotations

import datetime as dt
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from sqlalchemy import func, select

from portal import keyring as crypto
from portal.audit.models import AuditEvent
from portal.extensions import db
from portal.integrations import oauth
from portal.integrations import sync as scanner_sync
from portal.integrations.http import VendorError
from portal.integrations.itero import wire as itero_wire
from portal.integrations.models import ScannerIntegration
from portal.integrations.registry import adapter_for
from portal.integrations.services import new_callback_url
from portal.integrations.vendor import Jaw, OrderStage
from portal.practices.models import utcnow
from portal.scans.models import Scan
from tests import factories
from tests.jobs import free_port
from tests.integrations.itero_support import (
    ACCOUNT,
    ACCOUNT_NAME,
    CLIENT_ID,
    CLIENT_SECRET,
    connect,
    delivered,
    events,
    new_integration,
    patient_body,
    run_jobs,
    sign_in,
    sync_now,
)
from tests.integrations.signin import finish_sign_in


@pytest.fixture()
def itero(world, sandbox, live):
    integration = new_integration(world, sandbox)
    connect(integration)
    return integration


def audit_actions() -> list[str]:
    return list(db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def scans() -> list[Scan]:
    db.session.expire_all()
    return list(db.session.scalars(select(Scan).order_by(Scan.id)))


# -- sign-in, pairing, test connection -----------------------------------------------------------------

def test_sign_in_and_pairing_store_the_account_the_tokens_sealed_and_our_callback_url(world, sandbox, live):
    integration = new_integration(world, sandbox)

    callback = connect(integration)

    db.session.refresh(integration)
    config = integration.config
    assert integration.connected and config["account_id"] == ACCOUNT and config["account_name"] == ACCOUNT_NAME
    assert set(config["endpoints"]) >= set(itero_wire.REQUIRED_ENDPOINTS)
    assert all(url.startswith(sandbox.url) for url in config["endpoints"].values())
    assert config["doctors"] == [["DR-1001", "Dr. Maya Chen"], ["DR-1002", "Dr. Tom Okafor"]]
    # tokens: encrypted at rest, and the pairing's token set (not the sign-in's) is the one kept
    tokens = oauth.read(integration.id)
    assert tokens.access_token and tokens.access_token not in integration.tokens
    assert crypto.unseal(integration.tokens)["refresh_token"] == tokens.refresh_token
    assert sandbox.core.access[tokens.access_token]["account_id"] == ACCOUNT
    assert sandbox.itero.snapshot()["pairings"][ACCOUNT]["callback_url"] == callback
    assert callback.startswith(f"{live}/api/scanners/hooks/")
    # the code exchange used HTTP Basic; discovery came before the accounts were listed
    calls = [(r["endpoint"], r["auth_scheme"]) for r in sandbox.requests()]
    assert calls[:2] == [("itero.authorize", ""), ("itero.token", "Basic")]
    assert [e for e, _ in calls].index("itero.discovery") < [e for e, _ in calls].index("itero.accounts")
    assert sandbox.requests("itero.token")[0]["body"]["grant_type"] == "authorization_code"
    assert sandbox.requests("itero.pair")[0]["body"] == {"account_id": ACCOUNT, "callback_url": callback}


def test_before_an_account_is_chosen_the_integration_is_not_connected(world, sandbox, live):
    integration = new_integration(world, sandbox)
    sign_in(integration)

    assert not integration.connected
    assert adapter_for(integration).accounts() == [("8001234", "Bright Smile Dental (us)"),
                                                   ("8005678", "Bright Smile Dental - Eastside (us)")]
    with pytest.raises(VendorError, match="offers no account 999"):
        adapter_for(integration).pair("999", "http://127.0.0.1/x")


def test_test_connection_reads_the_practice_configuration(itero):
    assert adapter_for(itero).test_connection() == f"account {ACCOUNT_NAME}: 2 doctors, 1 scanner"


def test_a_login_page_off_the_allowed_hosts_is_refused(world, sandbox, live):
    integration = new_integration(world, sandbox)
    integration.set_config(login_url="https://login.evil.example/authorize")

    with pytest.raises(VendorError, match="not on the allowed hosts") as info:
        adapter_for(integration).authorize_url("s", "http://127.0.0.1/cb")
    assert info.value.kind == "host"


def test_missing_settings_and_credentials_say_what_to_enter(world, sandbox):
    integration = new_integration(world, sandbox)
    integration.credentials = ""
    with pytest.raises(VendorError, match="client id and client secret"):
        adapter_for(integration).authorize_url("s", "http://127.0.0.1/cb")
    integration.settings = "{}"
    with pytest.raises(VendorError, match=r"discovery base URL \(base_url\)"):
        adapter_for(integration).accounts()
    db.session.rollback()


def test_disconnect_unpairs_revokes_and_forgets(itero, sandbox):
    refresh = oauth.read(itero.id).refresh_token
    revoked_at_pairing = len(sandbox.requests("itero.revoke"))  # the sign-in's tokens

    adapter_for(itero).disconnect()
    db.session.commit()

    assert not itero.connected and itero.tokens == "" and itero.callback_key_hash is None
    assert itero.config["account_id"] == "" and itero.last_error == ""
    assert ACCOUNT not in sandbox.itero.snapshot()["pairings"]
    assert [r["body"]["token"] for r in sandbox.requests("itero.revoke")][revoked_at_pairing] == refresh
    assert refresh not in sandbox.core.refresh


# -- polling -------------------------------------------------------------------------------------------

def test_a_poll_pages_through_the_orders_and_the_next_asks_only_for_what_changed_since(itero, sandbox, world):
    sandbox.configure(page_size=2)
    patients = [factories.patient(world.practice) for _ in range(5)]
    db.session.commit()
    orders = [sandbox.add_itero_order(patient=patient_body(p)) for p in patients]

    first = sync_now(itero)

    assert first == {"new": 5}
    # Page 0 first (the contract does not say how pages count); this vendor counts from 1 and says so.
    assert [(r["query"], r["status"]) for r in sandbox.requests("itero.orders")] == [
        ({"page": "0"}, 400), ({"page": "1"}, 200), ({"page": "2"}, 200), ({"page": "3"}, 200)]
    assert itero.sync_cursor == orders[-1]["updated_at"]
    assert len(scans()) == 5 and all(s.case_id for s in scans())

    moved = sandbox.move_itero_order(orders[1]["order_id"], "lab_review")
    second = sync_now(itero)

    asked = sandbox.requests("itero.orders")[4:]  # from page 1 now: it learnt how this vendor counts
    assert [r["query"] for r in asked] == [{"page": "1", "updated_since": orders[-1]["updated_at"]}]
    assert second == {"unchanged": 1, "updated": 1}  # updated_since is inclusive: the newest comes again
    assert itero.sync_cursor == moved["updated_at"]
    assert sync_now(itero) == {"unchanged": 1}


def test_an_order_becomes_a_scan_with_file_references_not_files(itero, sandbox, world):
    patient = factories.patient(world.practice)
    db.session.commit()
    order = sandbox.add_itero_order(patient=patient_body(patient), procedure="Implant Crown", teeth=["46"])

    sync_now(itero)

    scan = scans()[0]
    assert (scan.order_id, scan.rx_id, scan.status, scan.stage) == (order["order_id"], order["rx_id"], "Completed",
                                                                     OrderStage.READY)
    assert scan.doctor_name == "Dr. Maya Chen" and scan.procedure == "Implant Crown"
    assert scan.item_list == [{"teeth": ["46"], "restoration": "implant_crown", "material": "", "shade": "",
                               "notes": ""}]
    files = {f.file_name: f for f in scan.current_files}
    upper = files[f"{order['order_id']}_scan1_upper.stl"]
    assert (upper.kind, upper.format, upper.jaw, upper.jaw_source) == ("scan", "STL", Jaw.UPPER, "vendor")
    assert upper.url == f"{sandbox.itero_url}/api/download/{order['order_id']}/ide"
    thumbs = files[f"{order['order_id']}_scan1_thumbnails.zip"]
    assert (thumbs.kind, thumbs.url) == ("image", f"{sandbox.itero_url}/api/download/{order['order_id']}/thumbnails")
    # the reference works: the download is a real zip, fetched with our token
    token = oauth.read(itero.id).access_token
    download = httpx.get(upper.url, headers={"Authorization": f"Bearer {token}"})
    assert download.status_code == 200 and download.content[:2] == b"PK"


def test_one_malformed_order_is_skipped_and_recorded_and_the_others_come_in(itero, sandbox, world):
    patients = [factories.patient(world.practice) for _ in range(3)]
    db.session.commit()
    orders = [sandbox.add_itero_order(patient=patient_body(p)) for p in patients]
    bad = orders[2]["order_id"]
    with sandbox.core.lock:
        sandbox.itero.orders[bad]["patient"] = "Ada Lovelace"  # not an object
        sandbox.itero.orders[bad]["assets"] = {"oops": True}

    result = sync_now(itero)

    assert result == {"new": 2, "unreadable": 1}
    assert sorted(s.order_id for s in scans()) == sorted([orders[0]["order_id"], orders[1]["order_id"]])
    assert itero.last_error == (f"1 order(s) could not be read and were skipped: iTero sent order {bad} that "
                                "can't be read: patient is missing.")
    assert itero.sync_cursor == orders[2]["updated_at"]  # its time could be read: the cursor moves on
    row = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "scanner.order_unreadable"))
    assert row.outcome == "error" and bad in row.after
    # polled again (updated_since is inclusive), the same unreadable order is not audited again
    rows = db.session.scalar(select(func.count(AuditEvent.id)))
    assert sync_now(itero) == {"unreadable": 1}
    assert db.session.scalar(select(func.count(AuditEvent.id))) == rows
    # once iTero sends it whole, it comes in and the error clears
    with sandbox.core.lock:
        sandbox.itero.orders[bad]["patient"] = patient_body(patients[2])
        sandbox.itero.orders[bad]["assets"] = []
    sandbox.move_itero_order(bad, "lab_review")
    assert sync_now(itero) == {"new": 1}
    assert itero.last_error == "" and "scanner.sync_recovered" in audit_actions()


def test_a_malformed_order_named_by_a_callback_fails_its_event_with_the_reason(itero, sandbox, world, queue):
    patient = factories.patient(world.practice)
    db.session.commit()
    sandbox.configure(callbacks=False)
    order = sandbox.add_itero_order(patient=patient_body(patient))
    with sandbox.core.lock:
        sandbox.itero.orders[order["order_id"]]["updated_at"] = "last Tuesday"
    sandbox.configure(callbacks=True)
    sandbox.move_itero_order(order["order_id"], "lab_review")
    with sandbox.core.lock:
        sandbox.itero.orders[order["order_id"]]["updated_at"] = "last Tuesday"
    delivered(sandbox, 1)

    run_jobs(queue)

    [event] = events(itero)
    assert event.outcome == "failed" and "updated_at 'last Tuesday' is not an ISO 8601 time" in event.error
    assert scans() == [] and "last Tuesday" in itero.last_error


@pytest.mark.parametrize("raw, why", [
    ("not an order", "it is a str, not an object"),
    ({"status": "Completed"}, "order_id is missing"),
    ({"order_id": "1", "updated_at": "2026-01-01T00:00:00Z", "patient": {}}, "status is missing"),
    ({"order_id": "1", "status": "Completed", "updated_at": "yesterday", "patient": {}},
     "updated_at 'yesterday' is not an ISO 8601 time"),
    ({"order_id": "1", "status": "Completed", "updated_at": "2026-01-01T00:00:00Z", "patient": {}, "teeth": ["99"]},
     "teeth holds '99', which is not an FDI tooth number"),
    ({"order_id": "1", "status": "Completed", "updated_at": "2026-01-01T00:00:00Z", "patient": {},
      "assets": [{"kind": "IDE"}]}, "asset 1 has no asset_id"),
    ({"order_id": "1", "status": "Completed", "updated_at": "2026-01-01T00:00:00Z", "patient": {},
      "history": [{"at": "2026-01-01T00:00:00Z"}]}, "history holds an entry without a status"),
])
def test_a_malformed_order_is_a_vendor_error_naming_what_is_wrong(raw, why):
    with pytest.raises(VendorError) as info:
        itero_wire.order(raw, {})
    assert why in str(info.value) and info.value.kind == "refused"


def test_statuses_map_to_stages_and_an_unknown_word_is_kept():
    for status, stage in [("Completed", OrderStage.READY), ("Ready for Download", OrderStage.READY),
                          ("iTero Modeling", OrderStage.IN_PROGRESS), ("Lab Review", OrderStage.REVIEW),
                          ("Scanning", OrderStage.RESCAN), ("iTero Milling", OrderStage.MILLING),
                          ("Ready to Ship", OrderStage.READY_TO_SHIP), ("Downloaded", OrderStage.DOWNLOADED),
                          ("  lab   REVIEW ", OrderStage.REVIEW)]:
        assert itero_wire.stage_of(status) is stage
    order = itero_wire.order({"order_id": 42, "status": "Quality Check", "updated_at": "2026-01-01T10:00:00+02:00",
                              "patient": {"first_name": "A", "last_name": "B", "date_of_birth": "not a date"},
                              "lab": None, "doctor": None, "assets": [{"asset_id": "x", "kind": "VIEWER",
                                                                       "jaw": "left", "size_bytes": "big"}]})
    assert (order.order_id, order.status, order.stage) == ("42", "Quality Check", OrderStage.IN_PROGRESS)
    assert order.updated_at == dt.datetime(2026, 1, 1, 8, 0)  # UTC, naive
    assert order.patient.date_of_birth is None and order.lab_name == ""
    assert [(a.kind, a.jaw, a.size_bytes, a.url) for a in order.assets] == [("viewer", Jaw.UNKNOWN, None, "")]


# -- the callback endpoint (docs/reliability.md W1, W4, W5) -----------------------------------------------------------------------

def test_a_callback_is_stored_once_and_re_read_through_the_api(itero, sandbox, world, queue):
    patient = factories.patient(world.practice)
    db.session.commit()
    order = sandbox.add_itero_order(patient=patient_body(patient))

    sent = delivered(sandbox, 1)

    assert sent[0]["body"] == {"rx_id": order["rx_id"], "account_number": ACCOUNT} and sent[0]["status"] == 204
    [event] = events(itero)
    assert (event.kind, event.order_ref, event.outcome) == ("scan", order["rx_id"], "pending")
    assert [name for name, _ in run_jobs(queue)] == ["jobs.scanners.handle_events"]
    [event] = events(itero)
    assert event.outcome == "done"
    assert scans()[0].order_id == order["order_id"] and scans()[0].source == "callback"
    assert sandbox.requests("itero.order_by_rx")[0]["path"].endswith(f"/orders/by-rx/{order['rx_id']}")


def test_the_same_callback_twice_while_one_waits_is_one_event_and_after_it_is_read_a_new_one(itero, sandbox,
                                                                                            world, queue, live):
    patient = factories.patient(world.practice)
    db.session.commit()
    order = sandbox.add_itero_order(patient=patient_body(patient))
    delivered(sandbox, 1)
    url = sandbox.itero.snapshot()["pairings"][ACCOUNT]["callback_url"]
    body = {"rx_id": order["rx_id"], "account_number": ACCOUNT}

    again = httpx.post(url, json=body)  # iTero repeats itself

    assert again.status_code == 204 and len(events(itero)) == 1
    run_jobs(queue)
    assert [e.outcome for e in events(itero)] == ["done"]
    # the same Rx notified again after it was read (a rescan, new files): read again; unchanged is a no-op
    rows = db.session.scalar(select(func.count(AuditEvent.id)))
    assert httpx.post(url, json=body).status_code == 204
    assert [e.outcome for e in events(itero)] == ["done", "pending"]
    run_jobs(queue)
    assert [e.outcome for e in events(itero)] == ["done", "done"]
    assert db.session.scalar(select(func.count(AuditEvent.id))) == rows
    assert len(scans()) == 1


def test_a_callback_while_the_order_is_being_read_leads_to_another_read(itero, sandbox, world, queue, live):
    """The rescan's callback arrives after the event job fetched the order but before it finished."""
    patient = factories.patient(world.practice)
    db.session.commit()
    order = sandbox.add_itero_order(patient=patient_body(patient))
    delivered(sandbox, 1)
    [event] = events(itero)
    event.outcome = "reading"  # the job has claimed it and is calling iTero
    db.session.commit()

    sandbox.move_itero_order(order["order_id"], "rescan")  # Scanning, then Completed with new files
    delivered(sandbox, 2)

    assert [e.outcome for e in events(itero)] == ["reading", "pending"]
    run_jobs(queue)
    assert [e.outcome for e in events(itero)] == ["done", "done"]
    assert all("scan2" in f.file_name for f in scans()[0].current_files)


@pytest.mark.parametrize("case", ["unknown key", "paused", "wrong account", "not json", "no rx", "nul in rx",
                                  "not paired"])
def test_refused_callbacks_store_nothing_and_enqueue_nothing(itero, world, queue, client, case):
    url = new_callback_url(itero)
    db.session.commit()
    path = url.split("://", 1)[1].split("/", 1)[1]
    body, expected = {"rx_id": "RX-1", "account_number": ACCOUNT}, 204
    if case == "unknown key":
        path, expected = path[:-5] + "AAAAA", 404
    elif case == "paused":
        itero.active, expected = False, 409
    elif case == "wrong account":
        body, expected = {"rx_id": "RX-1", "account_number": "8005678"}, 422
    elif case == "not json":
        body, expected = b"rx_id=RX-1", 400
    elif case == "no rx":
        body, expected = {"account_number": ACCOUNT}, 400
    elif case == "nul in rx":  # PostgreSQL can't even look such an id up: a 500 there before
        body, expected = {"rx_id": "RX-\u00001", "account_number": ACCOUNT}, 400
    elif case == "not paired":
        itero.connected_at, expected = None, 409
    db.session.commit()

    answer = client.raw.post(f"/{path}", **({"data": body} if isinstance(body, bytes) else {"json": body}))

    assert answer.status_code == expected, answer.get_data(as_text=True)
    assert answer.is_json and answer.json["error"]
    assert events(itero) == [] and queue.count == 0


def test_an_rx_id_that_tries_to_leave_its_path_is_quoted(itero, queue, client):
    url = new_callback_url(itero)
    db.session.commit()
    path = url.split("://", 1)[1].split("/", 1)[1]
    answer = client.raw.post(f"/{path}", json={"rx_id": "../../accounts?x=1", "account_number": ACCOUNT})
    assert answer.status_code == 204
    run_jobs(queue)

    [event] = events(itero)
    assert event.outcome == "ignored"  # iTero answered 404 for that Rx id
    assert itero_wire.order_by_rx_url({"order_by_rx": "https://a.itero.com/o/{rx_id}"}, "../x?y") == \
        "https://a.itero.com/o/..%2Fx%3Fy"


# -- tokens (docs/reliability.md W7) -------------------------------------------------------------------------------------------

def test_two_jobs_finding_the_token_expired_make_one_refresh_and_the_old_refresh_token_dies(
        app, world, sandbox, live):
    integration = new_integration(world, sandbox)
    connect(integration)
    old = oauth.read(integration.id)
    patient = factories.patient(world.practice)
    db.session.commit()
    order = sandbox.add_itero_order(patient=patient_body(patient))
    # the hour is up, at iTero and for us
    sandbox.expire_tokens("itero")
    integration.token_expires_at = utcnow() - dt.timedelta(seconds=1)
    db.session.commit()
    assert httpx.get(f"{sandbox.itero_url}/api/accounts",
                     headers={"Authorization": f"Bearer {old.access_token}"}).status_code == 401
    sandbox.fault("itero.token", "hang", seconds=0.4)  # iTero is slow to refresh: the jobs overlap
    start, results, errors = threading.Barrier(2), [], []
    integration_id = integration.id

    def job():
        with app.app_context():
            try:
                start.wait(5)
                found = adapter_for(db.session.get(ScannerIntegration, integration_id)).fetch(order["rx_id"])
                results.append(found.order_id)
            except Exception as exc:  # reported below
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)

    assert errors == [] and results == [order["order_id"]] * 2
    assert sandbox.counters["itero.refresh"] == 1
    new = oauth.read(integration.id)
    assert new.version == old.version + 1 and new.refresh_token != old.refresh_token
    assert new.expires_at > utcnow() + dt.timedelta(minutes=59)
    # discovery came just before the refresh (the contract), and the old refresh token no longer works
    sent = sandbox.requests()
    at = next(n for n, r in enumerate(sent) if (r["body"] or {}).get("grant_type") == "refresh_token")
    assert sent[at - 1]["endpoint"] == "itero.discovery"
    refused = httpx.post(f"{sandbox.itero_oauth}/token", data={"grant_type": "refresh_token",
                                                                "refresh_token": old.refresh_token},
                         auth=(CLIENT_ID, CLIENT_SECRET))
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert sandbox.counters["itero.refresh_refused"] == 1


def test_a_token_about_to_expire_is_refreshed_before_it_does_without_a_refused_call(itero, sandbox, world):
    patient = factories.patient(world.practice)
    db.session.commit()
    sandbox.add_itero_order(patient=patient_body(patient))
    itero.token_expires_at = utcnow() + dt.timedelta(seconds=30)  # the hour is nearly up
    db.session.commit()

    assert sync_now(itero) == {"new": 1}

    assert sandbox.counters["itero.refresh"] == 1
    # No gap: never a 401 (the 400 is page 0, which this vendor, counting from 1, refuses).
    assert [r["status"] for r in sandbox.requests("itero.orders")] == [400, 200]
    assert oauth.read(itero.id).expires_at > utcnow() + dt.timedelta(minutes=59)


def test_a_token_refused_mid_poll_is_refreshed_once_and_the_poll_goes_on(itero, sandbox, world):
    sandbox.configure(page_size=1)
    patients = [factories.patient(world.practice) for _ in range(3)]
    db.session.commit()
    for p in patients:
        sandbox.add_itero_order(patient=patient_body(p))
    adapter = adapter_for(itero)
    polled = adapter.poll()

    first = next(polled)
    sandbox.expire_tokens("itero")  # iTero drops the token before the hour we were promised is up
    rest = list(polled)

    assert len([first, *rest]) == 3
    assert sandbox.counters["itero.refresh"] == 1
    assert [r["status"] for r in sandbox.requests("itero.orders")] == [400, 200, 401, 200, 200]  # 400: page 0


def test_a_second_401_right_after_the_refresh_fails_the_sync_with_connect_again(itero, sandbox, monkeypatch):
    def refuse(vendor, request):
        from sandbox.vendors import ApiError

        raise ApiError(401, "the access token has expired")

    monkeypatch.setattr(sandbox.core, "bearer", refuse)

    result = sync_now(itero)

    assert "refused our access token again" in result["error"]
    assert sandbox.counters["itero.refresh"] == 1 and sandbox.counters["itero.orders"] == 2
    assert itero.last_error.endswith("Connect the integration again (Settings → Integrations).")
    assert itero.active  # not stopped: a person reconnects it


def test_a_refresh_token_iTero_refuses_means_connect_again(itero, sandbox):
    sandbox.core.refresh.clear()  # iTero forgot our refresh token
    itero.token_expires_at = utcnow() - dt.timedelta(seconds=1)
    db.session.commit()

    result = sync_now(itero)

    assert "iTero would not refresh our token" in result["error"]
    assert "Connect the integration again" in itero.last_error
    assert itero.refresh_lease_until is None  # the next try may refresh at once


# -- the allow-list (docs/reliability.md W8) -------------------------------------------------------------------------------------

@pytest.fixture()
def foreign():
    """A server on 127.0.0.2 (loopback, but not on the allowed hosts) that counts what reaches it."""
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.2", free_port()), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"127.0.0.2:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_a_discovery_pointing_at_a_foreign_host_stops_the_integration_and_sends_nothing_there(
        itero, sandbox, foreign):
    netloc, hits = foreign
    sandbox.configure(foreign_host=netloc, foreign_endpoints=["orders"])
    itero.token_expires_at = utcnow() - dt.timedelta(seconds=1)  # the next call refreshes: discovery first
    db.session.commit()

    result = sync_now(itero)

    assert "error" in result and hits == []
    assert not itero.active and itero.status_label == "Paused"
    assert itero.last_error.startswith("Stopped: iTero's discovery puts the orders endpoint off our allowed hosts.")
    assert "http://127.0.0.2" in itero.last_error
    assert "itero.refresh" not in sandbox.counters  # not even the refresh went out
    actions = audit_actions()
    assert actions[-2:] == ["scanner.sync_failed", "scanner.stopped"]
    assert scanner_sync.sweep()["polled"] == 0  # paused: nothing more is tried


def test_a_stored_endpoint_on_a_foreign_host_is_refused_before_the_call(itero, sandbox, foreign):
    netloc, hits = foreign
    endpoints = dict(itero.config["endpoints"], orders=f"http://{netloc}/orders")
    itero.set_config(endpoints=endpoints)
    db.session.commit()

    result = sync_now(itero)

    assert "not on the allowed hosts" in result["error"] and hits == []
    assert not itero.active and "itero.orders" not in sandbox.counters


def test_test_connection_reports_a_foreign_discovery(itero, sandbox, foreign):
    sandbox.configure(foreign_host=foreign[0], foreign_endpoints=["practice_configuration"])

    with pytest.raises(VendorError, match="practice_configuration endpoint off our allowed hosts"):
        adapter_for(itero).test_connection()
    assert foreign[1] == []


# -- 429, 500 ---------------------------------------------------------------------------------------------------

def test_429_is_recorded_and_retry_after_is_honoured_then_the_next_sync_succeeds(itero, sandbox, world):
    patient = factories.patient(world.practice)
    db.session.commit()
    sandbox.add_itero_order(patient=patient_body(patient))
    sandbox.fault("itero.orders", 429, retry_after=120)

    result = sync_now(itero)

    assert "HTTP 429" in result["error"] and "HTTP 429" in itero.last_error
    assert scanner_sync.retry_wait(itero) > 100
    assert sync_now(itero) == {"skipped": True, "retry_after": pytest.approx(120, abs=5)}
    assert sandbox.counters["itero.orders"] == 1  # nothing was asked while we were told to wait
    itero.last_sync_at = utcnow() - dt.timedelta(hours=1)
    db.session.commit()
    assert scanner_sync.sweep()["polled"] == 0

    itero.set_config(retry_not_before=(utcnow() - dt.timedelta(seconds=1)).isoformat())  # the time has come
    db.session.commit()
    assert sync_now(itero) == {"new": 1}
    assert itero.last_error == "" and not itero.config.get("retry_not_before")
    assert "scanner.sync_recovered" in audit_actions()


def test_a_500_is_recorded_and_the_next_sync_succeeds(itero, sandbox, world):
    patient = factories.patient(world.practice)
    db.session.commit()
    sandbox.add_itero_order(patient=patient_body(patient))
    sandbox.fault("itero.orders", 500)

    first = sync_now(itero)

    assert "HTTP 500" in first["error"] and "we will try again" in itero.last_error
    assert itero.sync_cursor == "" and scans() == []
    assert sync_now(itero) == {"new": 1}
    assert itero.last_error == ""


def test_a_transient_error_reading_a_callback_leaves_the_event_for_the_sweep(itero, sandbox, world, queue):
    patient = factories.patient(world.practice)
    db.session.commit()
    sandbox.fault("itero.order_by_rx", 500)
    sandbox.add_itero_order(patient=patient_body(patient))
    delivered(sandbox, 1)

    run_jobs(queue)

    [event] = events(itero)
    assert event.outcome == "pending" and "HTTP 500" in event.error
    event.received_at = utcnow() - dt.timedelta(minutes=5)
    db.session.commit()
    assert scanner_sync.sweep()["events"] == 1
    run_jobs(queue)
    assert [e.outcome for e in events(itero)] == ["done"] and len(scans()) == 1


# -- the admin pages (branch ui) end to end -------------------------------------------------------------------

def test_an_admin_connects_itero_through_the_settings_pages(client, login, world, sandbox, live, queue):
    login("admin")
    created = client.post("/admin/scanners/new?vendor=itero", {
        "name": "Surgery 2 iTero", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "base_url": sandbox.itero_url, "oauth_base": sandbox.itero_oauth, "lab_ids": [world.labs["email"].id]})
    assert created.status_code == 303, created.get_data(as_text=True)
    integration = db.session.scalar(select(ScannerIntegration).where(ScannerIntegration.name == "Surgery 2 iTero"))

    connect = client.post(f"/admin/scanners/{integration.id}/connect")
    assert connect.status_code == 303 and connect.headers["Location"].startswith(f"{sandbox.itero_oauth}/authorize?")
    at_itero = httpx.get(connect.headers["Location"])  # the person's browser at iTero's login page
    assert at_itero.status_code == 302
    back = at_itero.headers["Location"]
    assert back.startswith(f"{live}/admin/scanners/oauth/callback?code=")
    choose = finish_sign_in(client, back[len(live):])  # ... and back with us, in the same session
    html = choose.get_data(as_text=True)
    assert choose.status_code == 200 and ACCOUNT_NAME in html and "Bright Smile Dental - Eastside" in html
    assert not db.session.get(ScannerIntegration, integration.id).connected

    paired = client.post(f"/admin/scanners/{integration.id}/pair", {"account_id": ACCOUNT})

    assert paired.status_code == 303, paired.get_data(as_text=True)
    db.session.expire_all()
    integration = db.session.get(ScannerIntegration, integration.id)
    assert integration.connected and integration.config["account_id"] == ACCOUNT
    callback = sandbox.itero.snapshot()["pairings"][ACCOUNT]["callback_url"]
    assert callback.startswith(f"{live}/api/scanners/hooks/")
    tested = client.post(f"/admin/scanners/{integration.id}/test").get_data(as_text=True)
    assert f"account {ACCOUNT_NAME}: 2 doctors, 1 scanner" in tested
    # and a scan now comes in through the callback the pairing registered
    patient = factories.patient(world.practice)
    db.session.commit()
    order = sandbox.add_itero_order(patient=patient_body(patient))
    assert delivered(sandbox, 1)[0]["status"] == 204
    run_jobs(queue)
    assert scans()[0].order_id == order["order_id"] and scans()[0].case.patient_id == patient.id
    actions = audit_actions()
    assert [a for a in actions if a.startswith("scanner.")][:3] == ["scanner.created", "scanner.signed_in",
                                                                    "scanner.connected"]
